"""Hub integration: a `custom_generate` repository that runs the cascade, and its entry point.

transformers loads a `custom_generate` *repository* (a Hub repo id or a local directory holding
`custom_generate/generate.py`) differently from a `custom_generate` *callable*:

- the repository's `generate(model, **generate_arguments)` replaces `model.generate` entirely. It receives every
  argument of the call, `streamer=`, `assistant_model=` and `synced_gpus=` included, except `custom_generate` and
  `trust_remote_code`, and nothing has been prepared yet (no `generation_config` merge, no logits processors);
- a callable is called *after* that preparation, and only with the keyword arguments in its own signature.

`hub_generate` bridges the two with `hf_cascade.generation.run_cascade` (as an `enable()`d model does): it maps
`streamer=` to `cascade_streamer=`, turns `stop_strings=` with `tokenizer=` into a stopping criterion, refuses the
arguments the cascade cannot honour, and calls the model's stock `generate` with
`custom_generate=hf_cascade.generate`, so the exported repository stays a thin shim over the installed package
(`export_hub`).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

from .config import CONFIG_NAME, CascadeConfig
from .errors import CascadeTypeError, CascadeValueError

__all__ = [
    "GENERATE_PY",
    "HUB_TAGS",
    "config_call",
    "export_hub",
    "hub_generate",
    "requirements",
]

HUB_TAGS = ("custom_generate", "speculative-decoding", "hf_cascade")
_TRANSFORMERS_FALLBACK = "transformers>=5.0,<6"

GENERATE_PY = '''"""Cascade Speculative Drafting (hf_cascade) as a transformers `custom_generate` repository.

    model.generate(**inputs, custom_generate="<this repo or folder>", trust_remote_code=True,
                   assistant_models=[assistant], cascade_config={"lenience": 2.0}, max_new_tokens=64)

This file only delegates to the installed `hf_cascade` package (see requirements.txt): the decoding loop, its
checks and its tests live there. Greedy output is identical to plain `generate`; sampled output follows the target's
distribution. See README.md for the arguments.
"""

from hf_cascade.hub import hub_generate


def generate(*args, **kwargs):
    """Run `model.generate` with the cascade; transformers calls this as `generate(model=model, **arguments)`."""
    return hub_generate(*args, **kwargs)
'''


def hub_generate(*args: Any, **kwargs: Any) -> Any:
    """The entry point of an exported `custom_generate/generate.py`: `model.generate` with the cascade.

    transformers calls it as `generate(model=model, **generate_arguments)` when `custom_generate=` names a repository
    or a local folder, and as `generate(*args, model=model, **kwargs)` when such a repository's own model was loaded
    with `trust_remote_code=True` (its `model.generate` is then this function). `generate(model, ...)` works too.

    Args:
        args: the model (unless passed as `model=`), then `generate`'s positional arguments (`inputs`, ...).
        kwargs: every `generate` argument. The cascade's own are `assistant_models` (`list[PreTrainedModel]`,
            largest first), `cascade_config` (`CascadeConfig`, `dict` or `None`) and `cascade_streamer`;
            `streamer` is forwarded as `cascade_streamer`, `stop_strings` with `tokenizer` work as in plain
            `generate`.

    Returns:
        What `model.generate(..., custom_generate=hf_cascade.generate)` returns: `torch.LongTensor` of shape
        `(1, total_length)`, or a `CascadeDecoderOnlyOutput`/`CascadeEncoderDecoderOutput` with
        `return_dict_in_generate=True`.
    """
    from transformers.generation.utils import GenerationMixin

    from .generation import run_cascade

    model = kwargs.pop("model", None)
    if model is None:
        if not args:
            raise CascadeTypeError(
                "hf_cascade's custom_generate entry point needs the model: call generate(model, ...)."
            )
        model, *args = args
    if not isinstance(model, GenerationMixin):
        raise CascadeTypeError(
            f"hf_cascade's custom_generate entry point expects a transformers model with generate(), got "
            f"{type(model).__name__}."
        )
    # The refusals, streamer= and stop_strings= are handled as on an enable()d model: this entry point sees every
    # argument, as enable()'s wrapper does.
    return run_cascade(model, *args, **kwargs)


def requirements() -> list[str]:
    """The lines of an exported `custom_generate/requirements.txt`.

    `hf_cascade` is pinned to the installed version's compatible range (`>=X.Y.Z,<X.Y+1` before 1.0, `<X+1` after),
    `transformers` to the range `hf_cascade` itself requires. transformers checks these before it runs
    `generate.py`; it compares the first version bound of each line, so the lower bound comes first.

    Returns:
        `list[str]`, one requirement per line.
    """
    from packaging.version import Version

    from . import __version__

    major, minor = (*Version(__version__).release, 0)[:2]
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}.0"
    return [f"hf_cascade>={__version__},<{upper}", _transformers_requirement()]


def _transformers_requirement() -> str:
    """`transformers` with hf_cascade's own version range, lower bound first (transformers reads the first bound)."""
    try:
        from packaging.requirements import Requirement

        for line in importlib.metadata.requires("hf_cascade") or []:
            requirement = Requirement(line)
            if requirement.name == "transformers" and requirement.marker is None:
                specs = sorted(requirement.specifier, key=lambda s: (not s.operator.startswith(">"), s.version))
                return "transformers" + ",".join(str(s) for s in specs)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        pass
    return _TRANSFORMERS_FALLBACK


def export_hub(
    out_dir: str | os.PathLike,
    cascade_config: CascadeConfig | dict | None = None,
    target: str | None = None,
    assistants: list[str] | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write a Hub-ready `custom_generate` repository that runs the cascade from the installed `hf_cascade`.

    Files written (paths relative to `out_dir`):

    - `custom_generate/generate.py`: a few lines delegating to `hf_cascade.hub.hub_generate`;
    - `custom_generate/requirements.txt`: `requirements()`, checked by transformers before loading;
    - `README.md`: a model card with YAML metadata (`library_name: transformers`, tags `custom_generate`,
      `speculative-decoding`, `hf_cascade`) documenting the arguments and usage;
    - `cascade_config.json` when `cascade_config` is given, so that `CascadeConfig.from_pretrained(repo_id)` loads it.

    Upload the folder with `huggingface_hub.HfApi().upload_folder(repo_id=..., folder_path=out_dir)` (or `hf upload`),
    or use it locally: `model.generate(..., custom_generate=out_dir, trust_remote_code=True)`.

    Args:
        out_dir (`str` or `os.PathLike`): the repository folder (created if missing).
        cascade_config (`CascadeConfig` or `dict`, *optional*): a recommended configuration to ship and document.
        target (`str`, *optional*): Hub id of the target model the card's usage example loads.
        assistants (`list[str]`, *optional*): Hub ids of recommended assistant models, largest first.
        repo_id (`str`, *optional*): the Hub id the folder will be pushed to, used in the card's examples.
        overwrite (`bool`, *optional*, defaults to `False`): replace files that already exist in `out_dir`.

    Returns:
        `list[str]`: the paths written.
    """
    out_dir = os.fspath(out_dir)
    if os.path.isfile(out_dir):
        raise CascadeValueError(f"out_dir ({out_dir}) is a file; pass a directory for the custom_generate repository.")
    if isinstance(cascade_config, dict):
        cascade_config = CascadeConfig.from_dict(cascade_config)
    elif cascade_config is not None and not isinstance(cascade_config, CascadeConfig):
        raise CascadeTypeError(
            f"cascade_config must be a CascadeConfig, a dict or None, got {type(cascade_config).__name__}."
        )
    if assistants is not None and (isinstance(assistants, str) or not isinstance(assistants, (list, tuple))):
        raise CascadeTypeError(f"assistants must be a list of Hub ids, got {assistants!r}; wrap one as [name].")
    files = {
        os.path.join("custom_generate", "generate.py"): GENERATE_PY,
        os.path.join("custom_generate", "requirements.txt"): "\n".join(requirements()) + "\n",
        "README.md": _model_card(cascade_config, target, list(assistants or []), repo_id),
    }
    if cascade_config is not None:
        files[CONFIG_NAME] = cascade_config.to_json_string()
    existing = sorted(name for name in files if os.path.exists(os.path.join(out_dir, name)))
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already has {', '.join(existing)}; pass overwrite=True (--force) to replace them."
        )
    written = []
    for name, text in files.items():
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


def config_call(config: CascadeConfig) -> str:
    """Python source building `config` with only its non-default fields, e.g. `CascadeConfig(lenience=2.0)`."""
    defaults = CascadeConfig().to_dict()
    fields = config.to_dict()
    parts = []
    for name, value in fields.items():
        if name == "max_gram":
            changed = {k: v for k, v in value.items() if v != defaults["max_gram"][k]}
            if changed:
                parts.append(f"max_gram={changed!r}")
        elif value != defaults[name]:
            parts.append(f"{name}={value!r}")
    return f"hf_cascade.CascadeConfig({', '.join(parts)})"


def _model_card(config: CascadeConfig | None, target: str | None, assistants: list[str], repo_id: str | None) -> str:
    from . import __version__

    repo = repo_id or "<user>/<this-repo>"
    target_id = target or "<target model id>"
    assistant_ids = assistants or ["<assistant model id>"]
    if config is not None:
        config_source = f'hf_cascade.CascadeConfig.from_pretrained("{repo}")  # the cascade_config.json shipped here'
    else:
        config_source = config_call(CascadeConfig(lenience=2.0))
    tags = "\n".join(f"  - {tag}" for tag in HUB_TAGS)
    loads = "\n".join(
        f'assistant_{i} = AutoModelForCausalLM.from_pretrained("{name}", dtype=torch.float32)'
        for i, name in enumerate(assistant_ids)
    )
    assistant_list = ", ".join(f"assistant_{i}" for i in range(len(assistant_ids)))
    recommended = ""
    if target or assistants:
        lines = [f"- target: `{target_id}`"] if target else []
        lines += [f"- assistant {i} (largest first): `{name}`" for i, name in enumerate(assistants)]
        recommended = "\n## Recommended models\n\n" + "\n".join(lines) + "\n"
    shipped = ""
    if config is not None:
        shipped = (
            "\n## Shipped configuration\n\n`cascade_config.json` (load it with "
            f'`hf_cascade.CascadeConfig.from_pretrained("{repo}")`):\n\n```json\n{config.to_json_string()}```\n'
        )
    requirement_lines = "\n".join(requirements())
    return f"""---
library_name: transformers
tags:
{tags}
---

# Cascade Speculative Drafting (hf_cascade) for `model.generate`

A [`custom_generate`](https://huggingface.co/docs/transformers/generation_strategies#custom-generation-methods)
repository: `model.generate(..., custom_generate="{repo}", trust_remote_code=True)` runs **Cascade Speculative
Drafting** (Chen et al., [arXiv 2312.11462](https://arxiv.org/abs/2312.11462)) with the `hf_cascade` package
(version {__version__}). Smaller *assistant models* (largest first) and **Max-Gram**, a drafter that copies earlier
text, draft in a vertical and horizontal cascade; the target reviews every draft exactly.

- **Greedy output is identical**, token for token, to plain `model.generate(..., do_sample=False)`.
- **Sampled output has exactly the target's distribution**, logits processors included.
- `generate.py` only delegates to the installed `hf_cascade` package; nothing else is downloaded.
{recommended}
## Usage

```bash
pip install "hf_cascade>={__version__}"   # custom_generate/requirements.txt lists what is checked
```

```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_cascade

tokenizer = AutoTokenizer.from_pretrained("{target_id}")
target = AutoModelForCausalLM.from_pretrained("{target_id}", dtype=torch.float32)
{loads}

messages = [{{"role": "user", "content": "Rewrite in the past tense: I walk to the shop and buy bread."}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = target.generate(
    **inputs,
    custom_generate="{repo}",
    trust_remote_code=True,
    assistant_models=[{assistant_list}],
    cascade_config={config_source},
    max_new_tokens=64,
    do_sample=False,
)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
```

Without this repository the same call is `custom_generate=hf_cascade.generate` (no `trust_remote_code`).

## Arguments

Everything `model.generate` accepts, plus:

| argument | type | meaning |
|---|---|---|
| `assistant_models` | `list[PreTrainedModel]`, optional | Neural drafters sharing the target's vocabulary, **largest first**. Empty or omitted: target + Max-Gram only. |
| `cascade_config` | `hf_cascade.CascadeConfig`, `dict` or `None` | `k_matrix` (tokens each drafter adds per level), `lenience` (>= 1; loosens reviews between drafters only) and Max-Gram settings. `None`: defaults. |
| `streamer` / `cascade_streamer` | `BaseStreamer`, optional | Receives the prompt, then tokens as the target accepts them, then `end()`. |

Output: as plain `generate`; with `return_dict_in_generate=True` an `hf_cascade.CascadeDecoderOnlyOutput` (or
`CascadeEncoderDecoderOutput`) whose `cascade_stats` holds per-model drafted/accepted tokens, forward passes and time.

Not supported (each raises a clear error): batch size > 1, beam search, `num_return_sequences > 1`,
`assistant_model=` (use `assistant_models=[...]`), `output_attentions`/`output_hidden_states`, drafters with a
different vocabulary size, models whose KV cache cannot be cropped.
{shipped}
## Requirements

```text
{requirement_lines}
```
"""
