"""Configuration of a CS Drafting cascade: the k-matrix, lenience and Max-Gram settings."""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers.utils import PushToHubMixin

from .errors import CascadeTypeError, CascadeValueError

__all__ = [
    "ADAPTIVE_NEURAL_TOKENS",
    "BATCH_LAYOUTS",
    "CONFIG_NAME",
    "MAX_NGRAM_SIZE_LIMIT",
    "CascadeConfig",
    "MaxGramConfig",
    "default_k_matrix",
]

CONFIG_NAME = "cascade_config.json"
# The Max-Gram index stores every n-gram of `min_ngram_size..max_ngram_size` tokens ending at each position as a
# tuple, so time and memory per token grow with `max_ngram_size ** 2` (1024 with a 600-token prompt: 5 s and +242 MB
# per call). A longer suffix only chooses between earlier occurrences that already share the last 64 tokens, which in
# practice are the same repeated passage, so a larger bound costs much and gains nothing.
MAX_NGRAM_SIZE_LIMIT = 64
# The neural entries of the default k-matrix with `adaptive_drafters` (upper bounds: the controller cuts), and
# without it (fixed lengths, `benchmarks/results/k_defaults.md`). 16: where verification is flat (a target streamed
# from disk) the controller, pricing drafts by the drafter's confidence, wanted more than 8; where each token costs
# a good part of a forward it stops well before (`benchmarks/results/qwen-coder-1.5b-0.5b-cpu-confidence/`).
ADAPTIVE_NEURAL_TOKENS = 16
_FIXED_NEURAL_TOKENS = 4
# Max-Gram's entries above the smallest neural drafter without `adaptive_drafters` (with it: `num_pred_tokens`, a
# bound the controller cuts).
_FIXED_TAIL_TOKENS = 2
# `CascadeConfig.batch_layout` values: rows in their own cache rows, or packed into one (`hf_cascade.packed_runner`).
BATCH_LAYOUTS = ("padded", "packed")
_VERSION_KEY = "hf_cascade_version"  # recorded by to_dict, read only to explain unknown keys on load
_INT_LIST = re.compile(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]")  # a JSON list of ints spread over lines by indent=2


def _short(value: Any) -> str:
    """`repr(value)`, cut to 40 characters (an int like `10**400` would fill the screen)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CascadeTypeError(f"{name} must be an int, got {_short(value)} of type {type(value).__name__}.")
    if value < minimum:
        raise CascadeValueError(f"{name} must be >= {minimum}, got {_short(value)}.")
    if maximum is not None and value > maximum:
        raise CascadeValueError(f"{name} must be <= {maximum}{why}, got {_short(value)}.")


def _check_float(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = True,
    meaning: str = "",
) -> float:
    """`value` as a float after checking it is a finite real number in the interval `low..high`.

    Args:
        name (`str`): the field, for example `"CascadeConfig.lenience"`, named in every error.
        value: the setting; ints are accepted (`2` for `2.0`), bools are not.
        low, high (`float`): the bounds; `high=math.inf` only requires a finite value.
        low_open, high_open (`bool`): whether the bound itself is excluded.
        meaning (`str`, *optional*): what the number means, added to the error in parentheses.

    Returns:
        `float`: the value converted to a float.
    """
    if high == math.inf:
        bounds = f"{'>' if low_open else '>='} {low:g}"
        expected = f"be a finite number {bounds}"
    else:
        bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        expected = f"lie {bounds}"
    hint = f" ({meaning})" if meaning else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CascadeTypeError(f"{name} must be a float {bounds}, got {_short(value)}.")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range, e.g. 10**400
        number = math.inf
    below = number < low or (low_open and number == low)
    above = number > high or (high_open and number == high)
    if not math.isfinite(number) or below or above:
        raise CascadeValueError(f"{name} must {expected}{hint}, got {_short(value)}.")
    return number


@dataclass
class MaxGramConfig:
    """Settings of Max-Gram (MaG), the statistical drafter at the bottom of the cascade.

    Max-Gram finds the longest suffix of the current sequence (prompt and generated text) that occurred earlier, and
    proposes the tokens that followed its most recent occurrence. When nothing matches, it falls back to a bigram
    next-token table if one is given.

    Args:
        max_ngram_size (`int`, *optional*, defaults to 8):
            Longest suffix (in tokens) that is matched against the earlier text; at most `MAX_NGRAM_SIZE_LIMIT`
            (64): the index costs time and memory growing with its square, and longer suffixes gain nothing.
        min_ngram_size (`int`, *optional*, defaults to 1):
            Shortest suffix that still counts as a match.
        num_pred_tokens (`int`, *optional*, defaults to 16):
            The largest Max-Gram proposal in the default k-matrix (`default_k_matrix`). An explicit `k_matrix`
            decides instead.
        bigram_table (`str`, *optional*):
            Path to a bigram table file saved with `BigramTable.save` (safetensors; `hf-cascade bigram` builds one).
            `None` disables the fallback.
        occurrence (`str`, *optional*, defaults to `"latest"`):
            Which earlier occurrence of the matched suffix to copy from: `"latest"` (most recent) or `"earliest"`.
        adaptive_length (`bool`, *optional*, defaults to `True`):
            Cut each proposal to the tokens likely enough to be accepted to pay for their verification
            (`hf_cascade.adaptive`): acceptance is tracked per reviewing level and match length during the call.
            The k-matrix entry stays the upper bound. `False` always proposes the full k-matrix entry.
        token_cost (`float`, *optional*, defaults to 0.05):
            Cost of verifying one more draft token, as a fraction of a one-token forward pass of the reviewer, in
            (0, 1): the adaptive length's tuning knob. Higher values draft less, which helps prompts with little to
            copy and costs speed on copy-heavy ones. The default scored best in `benchmarks/results/k_defaults.md`.
        draft_cost (`float`, *optional*, defaults to 0.3):
            Fixed extra cost of a forward pass that verifies any draft at all, as a fraction of a one-token forward
            of the reviewer (finite, >= 0). With adaptive length, a proposal is made only when its expected accepted
            tokens exceed `draft_cost + token_cost * k`, so a short, unsure proposal is skipped where a multi-token
            forward costs clearly more than a one-token one. Measure it with `hf_cascade.benchmark.measure_cost`:
            `forward_s[2] / forward_s[1] - 1 - token_cost`; set it near 1.0 for models whose 2-token forward costs
            twice a one-token one. With `measure_cost` (the default) this and `token_cost` are only the prior: the
            values fitted to the reviewer's timed forward passes replace them. How the default was chosen:
            `docs/benchmarks.md` ("How the default `draft_cost` was chosen").
        measure_cost (`bool`, *optional*, defaults to `True`):
            With adaptive length, replace `draft_cost` and `token_cost` by values fitted to the reviewing model's
            own forward passes, timed during the `generate` call (`hf_cascade.cost`); the configured values are the
            prior until enough passes were timed. The best values depend on the machine and the kernels far more
            than on the model. Timed with host wall time on CPU (and for models accelerate offloads to CPU or disk),
            with CUDA events on a GPU, not at all on other devices, and for greedy decoding only: when sampling, the drafts decide how many random numbers are drawn, so the configured
            values apply and a seeded sampled run stays reproducible. Elsewhere, and for a target run by
            transformers' own assisted-decoding loop, the configured values are used too. Drafts then depend on
            timings, so forward-pass counts may differ from run to run; the output never does. `False` keeps the
            configured values (reproducible drafts).
    """

    max_ngram_size: int = 8
    min_ngram_size: int = 1
    num_pred_tokens: int = 16
    bigram_table: str | None = None
    occurrence: str = "latest"
    adaptive_length: bool = True
    token_cost: float = 0.05
    draft_cost: float = 0.3
    measure_cost: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `CascadeValueError`/`CascadeTypeError` naming the field when a setting is invalid."""
        _check_int(
            "MaxGramConfig.max_ngram_size",
            self.max_ngram_size,
            1,
            MAX_NGRAM_SIZE_LIMIT,
            " (MAX_NGRAM_SIZE_LIMIT: the index grows with its square, longer suffixes gain nothing)",
        )
        _check_int("MaxGramConfig.min_ngram_size", self.min_ngram_size, 1)
        _check_int("MaxGramConfig.num_pred_tokens", self.num_pred_tokens, 1)
        if self.min_ngram_size > self.max_ngram_size:
            raise CascadeValueError(
                f"MaxGramConfig.min_ngram_size ({self.min_ngram_size}) must not exceed max_ngram_size "
                f"({self.max_ngram_size}); lower min_ngram_size or raise max_ngram_size."
            )
        if self.occurrence not in ("latest", "earliest"):
            raise CascadeValueError(
                f"MaxGramConfig.occurrence must be 'latest' or 'earliest', got {self.occurrence!r}."
            )
        if not isinstance(self.adaptive_length, bool):
            raise CascadeTypeError(f"MaxGramConfig.adaptive_length must be a bool, got {self.adaptive_length!r}.")
        if not isinstance(self.measure_cost, bool):
            raise CascadeTypeError(f"MaxGramConfig.measure_cost must be a bool, got {self.measure_cost!r}.")
        self.token_cost = _check_float(
            "MaxGramConfig.token_cost", self.token_cost, 0, 1, low_open=True, meaning="a fraction of one forward pass"
        )
        self.draft_cost = _check_float(
            "MaxGramConfig.draft_cost", self.draft_cost, 0, meaning="a fraction of one forward pass"
        )
        if self.bigram_table is not None:
            if not isinstance(self.bigram_table, (str, os.PathLike)):
                raise CascadeTypeError(
                    "MaxGramConfig.bigram_table must be a path to a safetensors file saved with BigramTable.save, "
                    f"or None; got {type(self.bigram_table).__name__}."
                )
            self.bigram_table = os.fspath(self.bigram_table)
            if os.path.isdir(self.bigram_table):
                raise CascadeValueError(
                    f"MaxGramConfig.bigram_table ({self.bigram_table}) is a folder; give the path of the table file "
                    "itself (a .safetensors file written by BigramTable.save or `hf-cascade bigram --out FILE`)."
                )


def default_k_matrix(
    num_assistants: int,
    use_max_gram: bool,
    max_gram_tokens: int = 16,
    neural_tokens: int = _FIXED_NEURAL_TOKENS,
    tail_tokens: int = _FIXED_TAIL_TOKENS,
) -> list[list[int]]:
    """The k-matrix used when `CascadeConfig.k_matrix` is `None`.

    Rule (entries are per-drafter increments, row = reviewing level, column = drafter):

    - Max-Gram only (`num_assistants == 0`): `[[max_gram_tokens]]`.
    - Each neural drafter adds `neural_tokens` tokens at the level directly above it (diagonal entries `K[r][r]`:
      4 with fixed lengths, `ADAPTIVE_NEURAL_TOKENS = 16` as the upper bound the draft-length controller cuts with
      `CascadeConfig.adaptive_drafters`). It builds them by reviewing the levels below, so no neural model decodes
      alone.
    - Max-Gram, when on, adds up to `max_gram_tokens` at the level of the smallest neural drafter (its only
      reviewer) and up to `tail_tokens` more unreviewed tokens at every level above, the horizontal cascade's cheap
      tail: 2 with fixed lengths; `max_gram_tokens` with `CascadeConfig.adaptive_drafters`, whose controller cuts
      the tail on the reviewer's cost curve (`hf_cascade.controller.tail_length`), so that a copy the smallest
      drafter confirmed goes on into the target's draft past the drafter's tokens.
    - Other neural columns are 0: a deeper neural drafter reaches the target only through the levels between.

    Max-Gram entries are upper bounds: with `MaxGramConfig.adaptive_length` (the default) each proposal is cut to the
    tokens likely enough to be accepted. `max_gram_tokens` is `MaxGramConfig.num_pred_tokens` (default 16).

    Example: one assistant with Max-Gram gives `[[4, 2], [0, 16]]`; two assistants give
    `[[4, 0, 2], [0, 4, 2], [0, 0, 16]]` (with `neural_tokens=16, tail_tokens=16`, the default with
    `adaptive_drafters`: `[[16, 16], [0, 16]]`, ...). See `docs/concepts.md` for the rule and
    `benchmarks/results/k_defaults.md` for the measurements behind it.

    Args:
        num_assistants (`int`): number of neural assistant models.
        use_max_gram (`bool`): whether Max-Gram is the last drafter.
        max_gram_tokens (`int`, *optional*, defaults to 16): the largest Max-Gram proposal.
        neural_tokens (`int`, *optional*, defaults to 4): the diagonal entries.
        tail_tokens (`int`, *optional*, defaults to 2): Max-Gram's entries at the levels above the smallest neural
            drafter.

    Returns:
        `list[list[int]]` of shape `(n, n)` with `n = num_assistants + use_max_gram`.
    """
    n = num_assistants + int(use_max_gram)
    if n == 0:
        raise CascadeValueError(
            "A cascade needs at least one drafter: pass assistant_models=[...] or set CascadeConfig.use_max_gram=True."
        )
    k = [[0] * n for _ in range(n)]
    for r in range(num_assistants):
        k[r][r] = neural_tokens
        if use_max_gram:
            k[r][n - 1] = tail_tokens
    if use_max_gram:
        k[n - 1][n - 1] = max_gram_tokens
    return k


@dataclass
class CascadeConfig(PushToHubMixin):
    """Configuration of Cascade Speculative Drafting (Chen et al., arXiv 2312.11462).

    Drafters are ordered largest first: the `assistant_models` passed to `generate`, then Max-Gram when
    `use_max_gram` is on. Level 0 is reviewed by the target, level `r > 0` by drafter `r - 1`.

    Args:
        k_matrix (`list[list[int]]` of shape `(n, n)`, *optional*):
            Upper-triangular matrix with one row and one column per drafter (`n = len(assistant_models) +
            use_max_gram`). Entry `[r][c]` (`c >= r`) is how many tokens drafter `c` adds to the draft reviewed at
            level `r`; drafter `c` produces them with the sub-cascade `k_matrix[c+1:, c+1:]` below it (vertical
            cascade), and earlier columns fill earlier draft positions (horizontal cascade). Entries are
            per-drafter increments, not the paper's cumulative lengths. `None` uses `default_k_matrix` (neural
            entries 16 and Max-Gram entries `max_gram.num_pred_tokens` with `adaptive_drafters`; 4, and 2 above the
            smallest drafter, without). With `adaptive_drafters` every entry is an upper bound:
            the controller drafts fewer tokens, or none, where more do not pay; a column's unused budget passes to
            the next (smaller) drafter of the same row, as the cumulative goal of the horizontal cascade.
        lenience (`float`, *optional*, defaults to 1.0):
            Loosens reviews where a drafter reviews a smaller drafter (never the target's review, which is exact).
            Greedy: a draft token `x` is accepted when `lenience * p(x) >= max(p)`. Sampling: accepted with
            probability `min(1, lenience * p(x) / q(x))`. `1.0` makes every review exact.
        use_max_gram (`bool`, *optional*, defaults to `True`):
            Put Max-Gram at the bottom of the cascade, so the smallest neural drafter reviews Max-Gram drafts
            instead of decoding token by token.
        max_gram (`MaxGramConfig` or `dict`, *optional*):
            Max-Gram settings.
        confidence_threshold (`float`, *optional*, defaults to 0.0):
            Early stop of neural drafters, like transformers' `assistant_confidence_threshold`: when a neural
            drafter keeps a token to which its own (processed) distribution gives probability below this value, the
            draft it is building ends after that token, even if the k-matrix entry asks for more. Unsure positions
            are where the reviewer above is likely to reject, so this saves the forward passes that would extend a
            draft past them. `0.0` never stops early. Exactness does not depend on it: the stop depends only on the
            tokens drafted so far, so the target's review stays exact, greedy or sampling.
        adaptive_drafters (`bool`, *optional*, defaults to `True`):
            Let every neural level's draft length follow the measured costs and the tracked acceptance during the
            call (`hf_cascade.controller`): drafter `c` keeps extending the draft reviewed at level `r` while the
            expected accepted tokens of one more review per second of its time (its forwards plus the extra
            verification at the reviewer) beat the running throughput, and is skipped at that level when even its
            first review does not pay. The k-matrix entries are upper bounds. Forwards are timed with host wall time
            on CPU (and for models accelerate offloads), CUDA events on a GPU; when sampling, with
            `MaxGramConfig.measure_cost=False` or on a device that cannot be timed, the configured costs and a prior
            proportional to the parameters each model's forward multiplies per token apply, so a seeded sampled call
            stays reproducible. A timed drafter reviews at least once before it can be skipped.
            Output never changes. `False` drafts exactly the k-matrix entries (the fixed lengths of the paper).
        batch_layout (`str`, *optional*, defaults to `"padded"`):
            How the rows of a batch (batch size > 1) share each model's KV cache. `"padded"`: one cache row per row,
            every row fed as wide as the widest row of the pass (rows that wait feed masked padding), Max-Gram drafts
            cut to one length for the batch. `"packed"`: all rows in one cache row, each pass fed only the rows' real
            tokens (with `position_ids` and a 4D block mask), each row with its own Max-Gram draft length; exact only
            for decoder-only models with full causal attention under `sdpa` or `eager` attention, so other models
            run padded. Packed passes cost the real tokens in the linear layers but attend over every row's cache, so
            they gain with few rows or idle rows and lose with many rows (see `docs/concepts.md`, "Batches").
            Output never changes.
        pack_drafters (`bool`, *optional*, defaults to `True`):
            Run each neural drafter on CPU with its linear layers' weights packed for oneDNN while the call runs
            (`hf_cascade.drafter_packing`): with PyTorch's default kernels a drafter's 2-token forward costs about
            twice a 1-token one, packed about the same, so it reviews Max-Gram's drafts at little extra cost. The
            user's modules are swapped back when the call returns; the packed copies are kept on the model for later
            calls (memory: a second copy of the drafter's linear weights; `hf_cascade.forget_packed_drafter(model)`
            frees it, `hf_cascade.pack_drafter(model)` packs at load time). Drafters off CPU, placed by accelerate,
            already packed or sharing modules with the target are left as they are (`LevelStats.packing` says
            why). The target is never packed. Output never changes (greedy); sampled text follows the target's
            distribution either way, but a seeded sampled call gives other text with and without packing.
    """

    k_matrix: list[list[int]] | None = None
    lenience: float = 1.0
    use_max_gram: bool = True
    max_gram: MaxGramConfig | dict | None = field(default_factory=MaxGramConfig)
    confidence_threshold: float = 0.0
    adaptive_drafters: bool = True
    batch_layout: str = "padded"
    pack_drafters: bool = True

    def __post_init__(self) -> None:
        if self.max_gram is None:
            self.max_gram = MaxGramConfig()
        elif isinstance(self.max_gram, dict):
            known = set(MaxGramConfig.__dataclass_fields__)
            unknown = sorted(set(self.max_gram) - known)
            if unknown:
                raise CascadeValueError(
                    f"Unknown CascadeConfig.max_gram field(s) {unknown}; known fields are {sorted(known)}."
                )
            self.max_gram = MaxGramConfig(**self.max_gram)
        self.validate()

    def validate(self) -> None:
        """Raise `CascadeValueError`/`CascadeTypeError` naming the field when the configuration is invalid."""
        self.lenience = _check_float("CascadeConfig.lenience", self.lenience, 1, meaning="1 means exact reviews")
        for name in ("use_max_gram", "adaptive_drafters", "pack_drafters"):
            if not isinstance(getattr(self, name), bool):
                raise CascadeTypeError(f"CascadeConfig.{name} must be a bool, got {_short(getattr(self, name))}.")
        self.confidence_threshold = _check_float(
            "CascadeConfig.confidence_threshold",
            self.confidence_threshold,
            0,
            1,
            meaning="a probability; 0 never stops early",
        )
        if not isinstance(self.max_gram, MaxGramConfig):
            raise CascadeTypeError(
                f"CascadeConfig.max_gram must be a MaxGramConfig or a dict, got {type(self.max_gram).__name__}."
            )
        if self.k_matrix is not None:
            self.k_matrix = _validated_k_matrix(self.k_matrix)
        if self.batch_layout not in BATCH_LAYOUTS:
            raise CascadeValueError(
                f"CascadeConfig.batch_layout must be one of {', '.join(map(repr, BATCH_LAYOUTS))}, got "
                f"{_short(self.batch_layout)}."
            )

    def resolved_k_matrix(self, num_assistants: int) -> list[list[int]]:
        """The k-matrix for a cascade with `num_assistants` neural drafters, checked against that number.

        Args:
            num_assistants (`int`): number of neural assistant models passed to `generate`.

        Returns:
            `list[list[int]]` of shape `(n, n)`, `n = num_assistants + use_max_gram`.
        """
        n = num_assistants + int(self.use_max_gram)
        if self.k_matrix is None:
            tokens = self.max_gram.num_pred_tokens
            if self.adaptive_drafters:
                return default_k_matrix(num_assistants, self.use_max_gram, tokens, ADAPTIVE_NEURAL_TOKENS, tokens)
            return default_k_matrix(num_assistants, self.use_max_gram, tokens)
        if len(self.k_matrix) != n:
            drafters = f"{num_assistants} assistant model(s)" + (" + Max-Gram" if self.use_max_gram else "")
            raise CascadeValueError(
                f"CascadeConfig.k_matrix is {len(self.k_matrix)}x{len(self.k_matrix)} but the cascade has {n} "
                f"drafter(s) ({drafters}); give one row and one column per drafter, or k_matrix=None for the default."
            )
        return [list(row) for row in self.k_matrix]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields plus `hf_cascade_version` (the version that wrote it, so an older
        version loading the file can say why it does not know a key); `CascadeConfig.from_dict(config.to_dict()) ==
        config`."""
        from . import __version__

        return {**asdict(self), _VERSION_KEY: __version__}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> CascadeConfig:
        """Build a config from `to_dict()` output or a dict written in code.

        Unknown keys raise `CascadeValueError`: in a dict written in code a wrong name is a typo that must not be
        ignored (as `CascadeConfig(lenince=2)` raises the dataclass's `TypeError`). Files are different: `from_pretrained`
        and `from_json_file` drop keys this version does not know with a warning, so a file written by a newer
        hf_cascade still loads. `hf_cascade_version` (written by `to_dict`) is accepted and ignored.

        Args:
            config_dict (`dict[str, Any]`): the fields, `max_gram` as a dict or a `MaxGramConfig`.

        Returns:
            `CascadeConfig`: the validated config.
        """
        if not isinstance(config_dict, dict):
            raise CascadeTypeError(f"CascadeConfig.from_dict expects a dict, got {type(config_dict).__name__}.")
        fields = {key: value for key, value in config_dict.items() if key != _VERSION_KEY}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise CascadeValueError(f"Unknown CascadeConfig field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**fields)

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> CascadeConfig:
        """Load a `cascade_config.json` file.

        Like peft's configs, keys this version does not know (top level and in `max_gram`) are dropped with a
        warning naming them, so a file written by a newer hf_cascade still loads; the warning says so when the
        file's `hf_cascade_version` is newer than this one.

        Args:
            json_file (`str` or `os.PathLike`): the file's path.

        Returns:
            `CascadeConfig`: the validated config. Malformed JSON raises `CascadeValueError` naming the file, the
            line and the column.
        """
        path = os.fspath(json_file)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CascadeValueError(
                f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the file or write it "
                "again with CascadeConfig.save_pretrained."
            ) from None
        if not isinstance(data, dict):
            raise CascadeValueError(
                f"{path} must hold a JSON object of CascadeConfig fields, got a JSON {type(data).__name__}."
            )
        return cls.from_dict(_drop_unknown_keys(data, path))

    def to_json_string(self) -> str:
        """The content of `cascade_config.json`: `to_dict()` as indented JSON with sorted keys and a final newline.

        Each k-matrix row stays on one line (`[4, 0, 2]`), so the matrix reads as a matrix.
        """
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        return _INT_LIST.sub(lambda m: "[" + ", ".join(n.strip() for n in m.group(1).split(",")) + "]", text) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: Any = None) -> str:
        """Write `cascade_config.json` into `save_directory` (created if missing) and return the file path.

        Args:
            save_directory (`str` or `os.PathLike`): the directory, for example a model's own directory.
            max_shard_size: ignored (a config is never sharded); accepted because transformers' `push_to_hub`
                passes it.

        Returns:
            `str`: the path of the written `cascade_config.json`.
        """
        if os.path.isfile(save_directory):
            raise CascadeValueError(f"save_directory ({save_directory}) is a file; pass a directory.")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        tags: list[str] | None = None,
    ) -> Any:
        """Upload `cascade_config.json` to a Hub repository (created if missing), like `GenerationConfig.push_to_hub`.

        This is transformers' `PushToHubMixin.push_to_hub`: it writes the file with `save_pretrained` into a temporary
        folder next to the repository's model card (`README.md`: the existing one, with `tags` added, or a generic
        new one) and commits both. Other files of the repository are left alone, so the config can live next to a
        model's weights: `CascadeConfig.from_pretrained(repo_id)` then loads it.

        Args:
            repo_id (`str`): `"user/name"` or `"org/name"`.
            commit_message (`str`, *optional*): defaults to `"Upload config"`.
            commit_description (`str`, *optional*): the description of the commit.
            private (`bool`, *optional*): visibility of a repository created by this call.
            token (`bool` or `str`, *optional*): Hub token; defaults to the one stored by `hf auth login`.
            revision (`str`, *optional*): branch to push to (created if missing).
            create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
            tags (`list[str]`, *optional*): tags to add to the repository's model card, e.g. `["hf_cascade"]`.

        Returns:
            The `huggingface_hub.CommitInfo` of the commit.
        """
        return super().push_to_hub(
            repo_id,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            tags=tags,
        )

    @classmethod
    def from_pretrained(cls, pretrained: str | os.PathLike, **hub_kwargs: Any) -> CascadeConfig:
        """Load `cascade_config.json` from a local directory, a JSON file, or a Hub repository id.

        A reference that looks like a local path (`hf_cascade.paths.is_local_path`: it exists, is absolute,
        starts with `.`, `..` or `~`, is not a valid `owner/name` Hub id, has a `owner/...` whose `owner` is a local
        folder, or ends with `.json`) is never looked up on the Hub: a missing one raises at once.

        Args:
            pretrained (`str` or `os.PathLike`):
                A directory containing `cascade_config.json`, the path of such a file, or a Hub repo id
                (downloaded with `huggingface_hub.hf_hub_download`; `HF_HUB_OFFLINE=1` makes that fail loudly).
            hub_kwargs: passed to `hf_hub_download` (`revision`, `token`, `cache_dir`, ...).

        Returns:
            `CascadeConfig`: the validated config; unknown keys are dropped with a warning (`from_dict`).

        Raises:
            `CascadeValueError`: a local path that does not exist, a folder without `cascade_config.json`, or a file
                that is not valid JSON.
        """
        from .paths import is_local_path, missing_path_error

        path = os.path.expanduser(os.fspath(pretrained))
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
            if not os.path.isfile(path):
                raise CascadeValueError(
                    f"{pretrained} holds no {CONFIG_NAME}; write one there with CascadeConfig.save_pretrained, or pass "
                    "the path of the JSON file."
                )
        elif not os.path.isfile(path):
            if is_local_path(path) or path.endswith(".json"):
                raise missing_path_error(pretrained, f"a directory holding {CONFIG_NAME}, that file")
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo_id=path, filename=CONFIG_NAME, **hub_kwargs)
        return cls.from_json_file(path)


def _drop_unknown_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` without the keys (top level and in `max_gram`) this version does not know, with a warning naming them
    and saying whether a newer hf_cascade wrote the file (its `hf_cascade_version`)."""
    fields = {key: value for key, value in data.items() if key in CascadeConfig.__dataclass_fields__}
    unknown = sorted(set(data) - set(fields) - {_VERSION_KEY})
    if isinstance(fields.get("max_gram"), dict):
        extra = sorted(set(fields["max_gram"]) - set(MaxGramConfig.__dataclass_fields__))
        fields["max_gram"] = {k: v for k, v in fields["max_gram"].items() if k not in extra}
        unknown += [f"max_gram.{key}" for key in extra]
    if not unknown:
        return fields
    from packaging.version import InvalidVersion, Version

    from . import __version__

    written_by = data.get(_VERSION_KEY)
    reason = "a typo, or a file written by a newer hf_cascade"
    try:
        if written_by is not None and Version(str(written_by)) > Version(__version__):
            reason = (
                f"the file was written by hf_cascade {written_by}, newer than this {__version__}; upgrade to use them"
            )
    except InvalidVersion:
        pass
    warnings.warn(
        f"Ignoring unknown CascadeConfig key(s) {unknown} in {source} ({reason}). Known fields: "
        f"{sorted(CascadeConfig.__dataclass_fields__)}, max_gram: {sorted(MaxGramConfig.__dataclass_fields__)}.",
        UserWarning,
        stacklevel=3,  # the caller of from_json_file
    )
    return fields


def _validated_k_matrix(k_matrix: Any) -> list[list[int]]:
    if not isinstance(k_matrix, (list, tuple)) or not all(isinstance(row, (list, tuple)) for row in k_matrix):
        raise CascadeTypeError(f"CascadeConfig.k_matrix must be a list of lists of ints, got {k_matrix!r}.")
    n = len(k_matrix)
    if n == 0:
        raise CascadeValueError("CascadeConfig.k_matrix is empty; give one row and one column per drafter, or None.")
    for r, row in enumerate(k_matrix):
        if len(row) != n:
            raise CascadeValueError(
                f"CascadeConfig.k_matrix must be square: it has {n} rows but row {r} has {len(row)} entries "
                f"({list(row)}). Give one row and one column per drafter."
            )
        for c, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int):
                raise CascadeTypeError(f"CascadeConfig.k_matrix[{r}][{c}] must be an int, got {value!r}.")
            if value < 0:
                raise CascadeValueError(f"CascadeConfig.k_matrix[{r}][{c}] is {value}; token counts must be >= 0.")
            if c < r and value != 0:
                raise CascadeValueError(
                    f"CascadeConfig.k_matrix must be upper-triangular: entry [{r}][{c}] is {value}, but level {r} "
                    f"is reviewed by drafter {r - 1} and can only hold drafts of smaller drafters (columns >= {r})."
                )
        if sum(row) == 0:
            raise CascadeValueError(
                f"CascadeConfig.k_matrix row {r} is all zeros, so level {r} would never draft; give at least one "
                "positive entry per row."
            )
    return [list(map(int, row)) for row in k_matrix]
