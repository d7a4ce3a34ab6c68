"""vLLM's model-free `suffix` drafter (SuffixDecoding, arXiv 2411.04975) as a benchmark anchor.

SuffixDecoding keeps one suffix tree per request over its prompt and output (the local tree) and one global tree
over earlier responses, and proposes the highest-scoring continuation of the current suffix from either. Snowflake's
arctic-inference ships it as a C++ extension (`arctic_inference.suffix_decoding`); `../shared/anchors/build_suffix.sh`
builds just that module from the sdist, without vLLM. It is an optional benchmark peer, never a dependency: when it is
not importable, `suffix_available()` says why and the bench skips the method with that message.

Here it runs inside transformers' own assisted-decoding loop (as transformers' prompt lookup does) through the
`CandidateGenerator` contract, with vLLM's defaults for its `suffix` method: `max_tree_depth=24`,
`max_spec_factor=1.0`, `min_token_prob=0.1`, up to `num_speculative_tokens=24` per step.
"""

from __future__ import annotations

import importlib
import itertools
from typing import Any

import torch
from transformers.generation.candidate_generator import CandidateGenerator

__all__ = ["SuffixAnchor", "SuffixCandidateGenerator", "generate_with_suffix", "suffix_available"]

# vLLM's defaults for speculative_config={"method": "suffix"}.
MAX_TREE_DEPTH = 24
MAX_SPEC_TOKENS = 24
MAX_SPEC_FACTOR = 1.0
MIN_TOKEN_PROB = 0.1
_MODULE = "arctic_inference.suffix_decoding"


def suffix_available() -> str | None:
    """`None` when `arctic_inference.suffix_decoding` can be imported, else why not (with how to build it)."""
    try:
        importlib.import_module(_MODULE)
    except ImportError as e:
        return (
            f"the suffix method needs the optional module {_MODULE} ({e}); build it with "
            "../shared/anchors/build_suffix.sh DEST and put DEST on PYTHONPATH"
        )
    return None


class SuffixAnchor:
    """One SuffixDecoding cache shared by the calls of a benchmark: its global tree holds earlier responses.

    Args:
        global_tree (`bool`, *optional*, defaults to `True`): keep earlier responses for later calls (vLLM's
            default). `False` uses only each call's own prompt and output.
    """

    def __init__(self, global_tree: bool = True):
        module = importlib.import_module(_MODULE)
        self.cache = module.SuffixDecodingCache(MAX_TREE_DEPTH, -1 if global_tree else 0)
        self._ids = itertools.count()

    def candidate_generator(self, input_ids: torch.LongTensor, max_length: int) -> SuffixCandidateGenerator:
        """A candidate generator for one `generate` call on the prompt `input_ids` of shape `(1, prompt_length)`."""
        return SuffixCandidateGenerator(self, next(self._ids), input_ids, max_length)


class SuffixCandidateGenerator(CandidateGenerator):
    """SuffixDecoding behind transformers' `CandidateGenerator` contract, for one call (greedy decoding).

    Args:
        anchor (`SuffixAnchor`): the shared cache.
        request_id (`int`): this call's request id in the cache.
        input_ids (`torch.LongTensor` of shape `(1, prompt_length)`): the prompt.
        max_length (`int`): the call's `max_length` (drafts never reach past `max_length - 1`).
    """

    def __init__(self, anchor: SuffixAnchor, request_id: int, input_ids: torch.LongTensor, max_length: int):
        self.anchor = anchor
        self.request_id = request_id
        self.max_length = max_length
        self.committed = input_ids.shape[1]
        anchor.cache.start_request(request_id, input_ids[0].tolist())
        self.active = True

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs: Any) -> tuple[torch.LongTensor, None]:
        """Append the tokens committed since the last call to the request's response, then speculate.

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the committed sequence.

        Returns:
            `(candidate_ids, None)`: `torch.LongTensor` of shape `(1, sequence_length + k)`.
        """
        ids = input_ids[0].tolist()
        if len(ids) > self.committed:
            self.anchor.cache.add_active_response(self.request_id, ids[self.committed :])
            self.committed = len(ids)
        room = self.max_length - 1 - len(ids)
        if room <= 0:
            return input_ids, None
        draft = self.anchor.cache.speculate(
            self.request_id,
            ids[-MAX_TREE_DEPTH:],
            max_spec_tokens=min(MAX_SPEC_TOKENS, room),
            max_spec_factor=MAX_SPEC_FACTOR,
            min_token_prob=MIN_TOKEN_PROB,
        )
        if not draft.token_ids:
            return input_ids, None
        tokens = torch.tensor([draft.token_ids], dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, tokens], dim=1), None

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
        """Nothing to do: the next `get_candidates` reads what was committed."""

    def finish(self, sequences: torch.LongTensor) -> None:
        """Record the call's last tokens as its response and end the request (its response stays in the global tree).

        Args:
            sequences (`torch.LongTensor` of shape `(1, total_length)`): what `generate` returned.
        """
        if not self.active:
            return
        ids = sequences[0].tolist()
        if len(ids) > self.committed:
            self.anchor.cache.add_active_response(self.request_id, ids[self.committed :])
        self.anchor.cache.stop_request(self.request_id)
        self.active = False


def generate_with_suffix(
    target: Any, generator: SuffixCandidateGenerator, inputs: dict[str, torch.Tensor], **kwargs: Any
) -> Any:
    """`target.generate(**inputs, **kwargs)` with transformers' assisted-decoding loop drafting from `generator`.

    transformers has no public argument for a custom `CandidateGenerator`; prompt-lookup mode routes `generate` to
    `_assisted_decoding`, which asks the model's `_get_candidate_generator` for one. For the duration of this call
    only, that method is replaced on this model instance (benchmark use, never in the library's own decoding).
    """
    target._get_candidate_generator = lambda **_: generator
    try:
        out = target.generate(**inputs, prompt_lookup_num_tokens=MAX_SPEC_TOKENS, **kwargs)
    finally:
        del target._get_candidate_generator
    generator.finish(out.sequences if hasattr(out, "sequences") else out)
    return out
