"""The cascade's drafting side behind transformers' `CandidateGenerator` contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.logits_process import LogitsProcessorList

from .cascade import CascadeDrafter, DraftSettings, eos_token_ids
from .config import CascadeConfig, MaxGramConfig
from .cost import ForwardCostModel
from .errors import CascadeValueError
from .max_gram import BigramTable

__all__ = ["CascadeCandidateGenerator", "MaxGramCandidateGenerator", "eos_token_ids"]


class CascadeCandidateGenerator(CandidateGenerator):
    """Levels 1..n of CS Drafting as a transformers `CandidateGenerator`.

    `get_candidates` returns the draft the target reviews (the horizontal cascade of `k_matrix[0]`, each segment built
    by a vertical sub-cascade) and, when sampling, the logits of the distributions the draft tokens were drawn from
    (`log q`, `-inf` where `q = 0`), so any verifier following transformers' contract stays exact. The committed
    sequence is read from `input_ids` on each call, so `update_candidate_strategy` has nothing to do.

    The drafters run as given: `CascadeConfig.pack_drafters` needs the end of the call to put the drafters' own layers
    back, which this contract does not signal, so here it does nothing; pack a drafter for good with
    `hf_cascade.use_onednn_linear(model)` instead.

    Args:
        input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the prompt (decoder ids for encoder-decoders).
        assistant_models (`Sequence[PreTrainedModel]`): neural drafters, largest first.
        cascade_config (`CascadeConfig`, *optional*): k-matrix, lenience and Max-Gram settings.
        generation_config (`GenerationConfig`): gives `do_sample`, `max_length` and the EOS tokens.
        logits_processor (`LogitsProcessorList`, *optional*): the target's processors, applied to drafters' logits too.
        vocab_size (`int`): size of the target's logits.
        inputs_tensor (`torch.LongTensor` of shape `(1, source_length)`, *optional*): encoder input of encoder-decoders;
            also searched by Max-Gram.
        encoder_attention_mask (`torch.LongTensor` of shape `(1, source_length)`, *optional*): its mask.
        bigram_table (`BigramTable` or `str`, *optional*): overrides `cascade_config.max_gram.bigram_table`.
        target_cost (`ForwardCostModel`, *optional*): the target's timed forward passes, when the caller runs them
            (`hf_cascade.generate`); without it the target's Max-Gram drafts use the configured costs.
    """

    def __init__(
        self,
        input_ids: torch.LongTensor,
        assistant_models: Sequence[PreTrainedModel],
        cascade_config: CascadeConfig | None,
        generation_config: GenerationConfig,
        logits_processor: LogitsProcessorList | None,
        vocab_size: int,
        inputs_tensor: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        bigram_table: BigramTable | str | None = None,
        target_cost: ForwardCostModel | None = None,
    ):
        self.max_length = generation_config.max_length
        config = cascade_config if cascade_config is not None else CascadeConfig()
        settings = DraftSettings.from_config(
            config, len(assistant_models), generation_config, logits_processor, vocab_size, input_ids.device
        )
        self.drafter = CascadeDrafter.build(
            input_ids,
            assistant_models,
            settings,
            inputs_tensor=inputs_tensor,
            encoder_attention_mask=encoder_attention_mask,
            bigram_table=bigram_table,
            target_cost=target_cost,
        )
        self.stats = self.drafter.stats
        # The longest draft one `get_candidates` can return: the target level's row of the k-matrix (upper bounds).
        self._max_draft = sum(config.resolved_k_matrix(len(assistant_models))[0])

    @property
    def num_drafting_tokens(self) -> int:
        """The most new tokens one `get_candidates` call drafts (the sum of the k-matrix's first row). transformers >=
        5.25 reads it before its assisted loop (`Cache.activate_past_recording`) to size recurrent-state history."""
        return self._max_draft

    def get_candidates(
        self, input_ids: torch.LongTensor, **kwargs: Any
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Draft a continuation of `input_ids`.

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the committed sequence.

        Returns:
            `(candidate_ids, candidate_logits)`: `torch.LongTensor` of shape `(1, sequence_length + k)` and, when
            sampling, `torch.FloatTensor` of shape `(1, k, vocab_size)` (`log q`); `None` when greedy or `k == 0`.
        """
        committed = self.drafter.committed
        if input_ids.shape[1] < committed:
            raise CascadeValueError(
                f"input_ids has {input_ids.shape[1]} tokens but {committed} were already committed; a "
                "CascadeCandidateGenerator lives for one generate call, create a new one per call."
            )
        if input_ids.shape[1] > committed:
            self.drafter.advance(input_ids[0, committed:].tolist())
        tokens, q = self.drafter.draft(self.max_length - 1)
        if not tokens:
            return input_ids, None
        draft = torch.tensor([tokens], dtype=input_ids.dtype, device=input_ids.device)
        logits = q.log()[None] if q is not None else None
        return torch.cat([input_ids, draft], dim=1), logits

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        """Nothing to do: `get_candidates` reads the committed sequence from its `input_ids`."""


class MaxGramCandidateGenerator(CascadeCandidateGenerator):
    """Max-Gram on its own: a drop-in alternative to transformers' `PromptLookupCandidateGenerator`.

    Proposes the continuation of the longest earlier match (up to `max_ngram_size` tokens, most recent occurrence,
    searched through an incremental index), continues the copy when it runs out, falls back to a bigram table, never
    proposes past EOS, past `max_length - 1`, or a token a hard logits constraint forbids.

    Args:
        input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the prompt.
        eos_token_id (`int`, `list[int]` or `torch.Tensor`, *optional*): end-of-sequence token(s).
        num_output_tokens (`int`, *optional*, defaults to 10): tokens per proposal.
        max_ngram_size (`int`, *optional*, defaults to 8): longest suffix matched.
        min_ngram_size (`int`, *optional*, defaults to 1): shortest suffix matched.
        max_length (`int`, *optional*, defaults to 20): total length limit (prompt included).
        logits_processor (`LogitsProcessorList`, *optional*): used to vet proposals against hard constraints.
        vocab_size (`int`, *optional*): vocabulary size; needed with `logits_processor`, `do_sample` or a bigram table.
        bigram_table (`BigramTable` or `str`, *optional*): fallback table or the path of one.
        do_sample (`bool`, *optional*, defaults to `False`): return one-hot candidate logits for speculative sampling.
        encoder_input_ids (`torch.LongTensor` of shape `(1, source_length)`, *optional*): also searched (T5-style).
        adaptive_length (`bool`, *optional*, defaults to `False`): cut proposals by their tracked acceptance (see
            `MaxGramConfig.adaptive_length`); off by default so it behaves like prompt lookup's fixed length.
        token_cost (`float`, *optional*, defaults to `MaxGramConfig.token_cost`): see there.
        draft_cost (`float`, *optional*, defaults to `MaxGramConfig.draft_cost`): see there.
    """

    def __init__(
        self,
        input_ids: torch.LongTensor,
        eos_token_id: int | list[int] | torch.Tensor | None = None,
        num_output_tokens: int = 10,
        max_ngram_size: int = 8,
        min_ngram_size: int = 1,
        max_length: int = 20,
        logits_processor: LogitsProcessorList | None = None,
        vocab_size: int | None = None,
        bigram_table: BigramTable | str | None = None,
        do_sample: bool = False,
        encoder_input_ids: torch.Tensor | None = None,
        adaptive_length: bool = False,
        token_cost: float = MaxGramConfig.token_cost,
        draft_cost: float = MaxGramConfig.draft_cost,
    ):
        needs_vocab = do_sample or bigram_table is not None or bool(logits_processor)
        if vocab_size is None and needs_vocab:
            raise CascadeValueError(
                "MaxGramCandidateGenerator needs vocab_size when do_sample, logits_processor or bigram_table is "
                "given; pass vocab_size=model.config.get_text_config().vocab_size."
            )
        max_gram = MaxGramConfig(
            max_ngram_size,
            min_ngram_size,
            num_output_tokens,
            adaptive_length=adaptive_length,
            token_cost=token_cost,
            draft_cost=draft_cost,
        )
        config = CascadeConfig(k_matrix=[[num_output_tokens]], use_max_gram=True, max_gram=max_gram)
        if isinstance(eos_token_id, torch.Tensor):
            eos_token_id = eos_token_id.flatten().tolist()
        generation_config = GenerationConfig(eos_token_id=eos_token_id, max_length=max_length, do_sample=do_sample)
        super().__init__(
            input_ids,
            assistant_models=[],
            cascade_config=config,
            generation_config=generation_config,
            logits_processor=logits_processor,
            vocab_size=vocab_size if vocab_size is not None else 0,
            inputs_tensor=encoder_input_ids,
            bigram_table=bigram_table,
        )
