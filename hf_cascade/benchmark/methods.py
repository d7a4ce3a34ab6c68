"""The generation methods a benchmark compares, and one timed run of a method on one prompt.

Methods are what a user would otherwise pick: plain greedy `generate`, transformers' prompt lookup
(`prompt_lookup_num_tokens=`), transformers' assisted generation (`assistant_model=`, one drafter) and any number of
named hf_cascade configurations. A method is written on the command line as `[LABEL=]KIND[:ARG][@CONFIG]`:

    greedy
    prompt-lookup            prompt-lookup:10          (number of lookup tokens; default 10)
    assisted:qwen05          (transformers assisted generation with the drafter registered as `qwen05`)
    cascade                  (Max-Gram only, default CascadeConfig)
    cascade:qwen05           cascade:qwen15,qwen05     (assistant models, largest first)
    big=cascade:qwen05@cfg.json                        (a label, and a cascade_config.json file or directory)
    cascade+memory           cascade+memory:qwen05     (a MaxGramMemory kept across the prompts, in order)
    suffix                   suffix:local              (vLLM's SuffixDecoding with / without its global tree of
                                                        earlier responses; needs arctic_inference, see suffix.py)

Methods that remember (`cascade+memory`, `suffix`) carry state from prompt to prompt: each run of a prompt starts
from what the earlier prompts left (their greedy answers), never from an earlier repeat of the same prompt.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import CascadeConfig
from ..errors import CascadeValueError
from ..memory import MaxGramMemory
from .suffix import SuffixAnchor, SuffixCandidateGenerator, generate_with_suffix

__all__ = ["METHOD_KINDS", "ForwardTimer", "Method", "MethodState", "Run", "parse_method", "run_method"]

METHOD_KINDS = ("greedy", "prompt-lookup", "assisted", "cascade", "suffix")


@dataclass(frozen=True)
class Method:
    """One generation method of a benchmark.

    Args:
        label (`str`): the name shown in reports; unique within a benchmark.
        kind (`str`): one of `METHOD_KINDS`.
        drafters (`tuple[str, ...]`): names of registered drafter models: exactly one for `"assisted"`, any number
            (largest first) for `"cascade"`, none otherwise.
        cascade_config (`CascadeConfig`, *optional*): for `"cascade"`; `None` means `CascadeConfig()`.
        lookup_tokens (`int`): `prompt_lookup_num_tokens` for `"prompt-lookup"`.
        memory (`bool`): for `"cascade"`, keep a `MaxGramMemory` across the prompts (`cascade+memory`); for
            `"suffix"`, keep SuffixDecoding's global tree of earlier responses (`suffix`; `suffix:local` turns it off).
    """

    label: str
    kind: str
    drafters: tuple[str, ...] = ()
    cascade_config: CascadeConfig | None = None
    lookup_tokens: int = 10
    memory: bool = False

    @property
    def needs_state(self) -> bool:
        """Whether runs of this method carry a `MethodState` from prompt to prompt (`cascade+memory`, `suffix`)."""
        return self.memory or self.kind == "suffix"

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise CascadeValueError(
                f"method {self.label!r}: unknown kind {self.kind!r}; use one of {', '.join(METHOD_KINDS)}"
            )
        if self.kind == "assisted" and len(self.drafters) != 1:
            raise CascadeValueError(
                f"method {self.label!r}: transformers' assisted generation takes exactly one drafter, got "
                f"{list(self.drafters)}; write assisted:NAME"
            )
        if self.kind in ("greedy", "prompt-lookup", "suffix") and self.drafters:
            raise CascadeValueError(
                f"method {self.label!r}: {self.kind} takes no drafter models, got {list(self.drafters)}"
            )
        if self.cascade_config is not None and self.kind != "cascade":
            raise CascadeValueError(f"method {self.label!r}: only cascade methods take a @CONFIG")
        if self.kind == "cascade":
            config = self.cascade_config or CascadeConfig()
            if not self.drafters and not config.use_max_gram:
                raise CascadeValueError(f"method {self.label!r}: a cascade without assistants needs use_max_gram=True")
            config.resolved_k_matrix(len(self.drafters))  # raises a ValueError naming the k_matrix mismatch


def parse_method(spec: str) -> Method:
    """Parse `[LABEL=]KIND[:ARG][@CONFIG]` (see the module docstring) into a `Method`.

    Raises:
        `ValueError`: naming the spec and what is wrong with it.
    """
    text = spec.strip()
    label = None
    if "=" in text.split("@", 1)[0]:
        label, text = (part.strip() for part in text.split("=", 1))
        if not label:
            raise CascadeValueError(f"method {spec!r}: empty label before '='")
    config = None
    if "@" in text:
        text, config_path = (part.strip() for part in text.split("@", 1))
        try:
            config = CascadeConfig.from_pretrained(config_path)
        except (OSError, ValueError, TypeError) as e:
            raise CascadeValueError(f"method {spec!r}: cannot read the cascade config {config_path!r}: {e}") from e
    kind, _, arg = text.partition(":")
    kind, plus, modifier = kind.strip().partition("+")
    memory = kind == "suffix"
    if plus:
        if (kind, modifier.strip()) != ("cascade", "memory"):
            raise CascadeValueError(f"method {spec!r}: only cascade+memory takes a '+' modifier")
        memory = True
    if kind == "suffix" and arg:
        if arg.strip() != "local":
            raise CascadeValueError(f"method {spec!r}: suffix takes no argument or ':local', got {arg!r}")
        memory, arg = False, ""
        label = label or "suffix:local"
    if kind not in METHOD_KINDS:
        raise CascadeValueError(f"method {spec!r}: unknown kind {kind!r}; use one of {', '.join(METHOD_KINDS)}")
    drafters: tuple[str, ...] = ()
    lookup_tokens = 10
    if kind == "prompt-lookup" and arg:
        if not arg.isdigit() or int(arg) < 1:
            raise CascadeValueError(f"method {spec!r}: prompt-lookup:N needs a positive integer N, got {arg!r}")
        lookup_tokens = int(arg)
    elif arg:
        drafters = tuple(name.strip() for name in arg.split(","))
        if any(not name for name in drafters):
            raise CascadeValueError(f"method {spec!r}: empty drafter name in {arg!r}")
    if label is None:
        label = text.split(":", 1)[0].strip() if not arg else f"{text.split(':', 1)[0].strip()}:{arg}"
    return Method(
        label=label, kind=kind, drafters=drafters, cascade_config=config, lookup_tokens=lookup_tokens, memory=memory
    )


class ForwardTimer:
    """Counts the forward passes of some models and the wall time spent inside them (forward hooks).

    Used as a `with` block around one `generate` call. On CUDA the hooks synchronise the device so that the time is
    the kernels' and not just their launch: this perturbs the run slightly, which is why it is benchmark-only.

    Args:
        models (`dict[str, torch.nn.Module]`): name -> model; the same module under two names is counted once.
    """

    def __init__(self, models: dict[str, torch.nn.Module]):
        self.models = models
        self.passes = dict.fromkeys(models, 0)
        self.seconds = dict.fromkeys(models, 0.0)
        self._handles: list[Any] = []
        self._started: dict[str, float] = {}

    def _sync(self, module: torch.nn.Module) -> None:
        device = getattr(module, "device", None)
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    def _pre(self, name: str):
        def hook(module: torch.nn.Module, *_: Any) -> None:
            self._sync(module)
            self._started[name] = time.perf_counter()

        return hook

    def _post(self, name: str):
        def hook(module: torch.nn.Module, *_: Any) -> None:
            self._sync(module)
            self.seconds[name] += time.perf_counter() - self._started.pop(name)
            self.passes[name] += 1

        return hook

    def __enter__(self) -> ForwardTimer:
        seen: set[int] = set()
        for name, module in self.models.items():
            if id(module) in seen:
                continue
            seen.add(id(module))
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class Run:
    """One timed `generate` call.

    Args:
        seconds (`float`): wall time of the call.
        new_tokens (`int`): tokens generated after the prompt.
        ids (`list[int]`): those tokens.
        forward_passes (`dict[str, int]`): model name (`"target"` or a drafter name) -> forward passes.
        forward_seconds (`dict[str, float]`): model name -> wall time inside its forward passes.
        levels (`list[dict]`): for cascade methods, `CascadeStats.to_dict()["levels"]` (per-level drafted, accepted,
            forward passes and time); empty otherwise.
        rows (`list[list[int]]`): for a batch of prompts, each row's new tokens up to and including its first EOS
            (padding excluded, as `CascadeStats` counts them); `ids` is then their concatenation and `new_tokens`
            their total. Empty for one prompt.
    """

    seconds: float
    new_tokens: int
    ids: list[int]
    forward_passes: dict[str, int] = field(default_factory=dict)
    forward_seconds: dict[str, float] = field(default_factory=dict)
    levels: list[dict[str, Any]] = field(default_factory=list)
    rows: list[list[int]] = field(default_factory=list)

    @property
    def outside_forward_seconds(self) -> float:
        """Wall time not spent in any model's forward pass (drafting logic, Max-Gram, sampling, Python)."""
        return max(0.0, self.seconds - sum(self.forward_seconds.values()))


class MethodState:
    """What a remembering method carries from prompt to prompt of a benchmark (nothing for the others).

    Each run of a prompt starts from the state the earlier prompts left: `cascade+memory` runs get a copy of the
    memory (their own additions are dropped), and a `suffix` run's response is evicted from the global tree as soon as
    the run ends (`end_run`), so a later repeat of the same prompt cannot copy its own answer. `end_prompt` then
    records the prompt's answer once, and the acceptance record (`MaxGramMemory.tracker`) of the prompt's first run,
    as a user's single call would have left it.

    Args:
        method (`Method`): the method.
        vocab_size (`int`): the target's vocabulary size (for the memory).
        start (`MaxGramMemory`, *optional*): what the method remembers before the first prompt (`bench --memory`):
            a `cascade+memory` method starts from a copy of it, a `suffix` method with its global tree starts with its
            documents there as earlier responses; `suffix:local` and the other methods ignore it.
    """

    def __init__(self, method: Method, vocab_size: int, start: MaxGramMemory | None = None):
        self.method = method
        self.memory = None
        if method.kind == "cascade" and method.memory:
            self.memory = copy.deepcopy(start) if start is not None else MaxGramMemory(vocab_size=vocab_size)
        self.anchor = SuffixAnchor(global_tree=method.memory) if method.kind == "suffix" else None
        self._ids = itertools.count(-1, -1)  # request ids of recorded answers (runs use 0, 1, 2, ...)
        self._first_run: MaxGramMemory | None = None  # the memory copy the prompt's first run used
        if self.anchor is not None and method.memory and start is not None:
            for document in start.documents():
                self._remember_response(document)

    def run_kwargs(self) -> dict[str, Any]:
        """Extra `generate` arguments of one run."""
        if self.memory is None:
            return {}
        run_memory = copy.deepcopy(self.memory)
        self._first_run = self._first_run or run_memory
        return {"max_gram_memory": run_memory}

    def end_run(self, generator: SuffixCandidateGenerator | None) -> None:
        """A run is over: drop a `suffix` run's response from the global tree (`end_prompt` records the answer)."""
        if generator is not None and self.method.memory:
            self.anchor.cache.evict_cached_response(generator.request_id)

    def end_prompt(self, answer: list[int]) -> None:
        """All runs of a prompt are done: remember its answer (the new tokens, identical in every run) once."""
        if self.memory is not None:
            self.memory.add(answer)
            if self._first_run is not None:
                self.memory.tracker, self._first_run = self._first_run.tracker, None
        if self.anchor is not None and self.method.memory:
            self._remember_response(answer)

    def _remember_response(self, tokens: list[int]) -> None:
        """Put `tokens` in the suffix method's global tree as an earlier response (of no prompt)."""
        request_id = next(self._ids)
        self.anchor.cache.start_request(request_id, [])
        self.anchor.cache.add_active_response(request_id, tokens)
        self.anchor.cache.stop_request(request_id)


def run_method(
    method: Method,
    target: torch.nn.Module,
    drafters: dict[str, torch.nn.Module],
    inputs: dict[str, torch.Tensor],
    generation_kwargs: dict[str, Any],
    state: MethodState | None = None,
) -> Run:
    """Run `method` once on one prompt and time it.

    Args:
        method (`Method`): what to run.
        target (`PreTrainedModel`): the target model.
        drafters (`dict[str, PreTrainedModel]`): registered drafter models by name.
        inputs (`dict[str, torch.Tensor]`): `input_ids` and `attention_mask` of shape `(batch_size, prompt_length)`,
            left-padded when `batch_size > 1` (only greedy and cascade methods batch).
        generation_kwargs (`dict`): shared `generate` arguments (`max_new_tokens`, `do_sample=False`, `pad_token_id`).
        state (`MethodState`, *optional*): for methods with `Method.needs_state`: what the
            earlier prompts left; a fresh state when not given.

    Returns:
        `Run`
    """
    from .. import generation  # looked up per call, so a patched generate (tests) is what runs

    if state is None and method.needs_state:
        state = MethodState(method, target.config.get_text_config().vocab_size)
    kwargs = dict(generation_kwargs)
    used = {name: drafters[name] for name in method.drafters}
    suffix_generator = None
    if method.kind == "prompt-lookup":
        kwargs["prompt_lookup_num_tokens"] = method.lookup_tokens
    elif method.kind == "assisted":
        kwargs["assistant_model"] = used[method.drafters[0]]
    elif method.kind == "cascade":
        kwargs.update(
            custom_generate=generation.generate,
            assistant_models=list(used.values()),
            cascade_config=method.cascade_config or CascadeConfig(),
            return_dict_in_generate=True,
            **state.run_kwargs() if state is not None else {},
        )
    elif method.kind == "suffix":
        prompt_length = inputs["input_ids"].shape[1]
        max_length = prompt_length + kwargs["max_new_tokens"]
        suffix_generator = state.anchor.candidate_generator(inputs["input_ids"], max_length)
    with ForwardTimer({"target": target, **used}) as timer:
        t0 = time.perf_counter()
        if suffix_generator is not None:
            out = generate_with_suffix(target, suffix_generator, inputs, **kwargs)
        else:
            out = target.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - t0
    if state is not None:
        state.end_run(suffix_generator)
    sequences = out.sequences if method.kind == "cascade" else out
    levels = out.cascade_stats.to_dict()["levels"] if method.kind == "cascade" else []
    new = sequences[:, inputs["input_ids"].shape[1] :].tolist()
    if len(new) == 1:
        return Run(seconds, len(new[0]), new[0], dict(timer.passes), dict(timer.seconds), levels)
    eos = kwargs.get("eos_token_id", target.generation_config.eos_token_id)
    eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    rows = [_up_to_eos(row, eos) for row in new]
    ids = [t for row in rows for t in row]
    return Run(seconds, len(ids), ids, dict(timer.passes), dict(timer.seconds), levels, rows)


def _up_to_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """`tokens` up to and including the first EOS (a batch row's new tokens without the padding after its end)."""
    end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
    return tokens[:end]
