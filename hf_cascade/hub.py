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
`custom_generate=hf_cascade.generate`. `export_hub` writes a repository whose `custom_generate/` carries this module
and the generation modules it imports (copied from the installed package at export time), so the repository runs with
transformers alone.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
from typing import Any

from .config import CONFIG_NAME, CascadeConfig
from .errors import CascadeTypeError, CascadeValueError

__all__ = [
    "GENERATE_PY",
    "ExistingFilesError",
    "HUB_TAGS",
    "config_call",
    "export_hub",
    "bundled_sources",
    "hub_generate",
    "requirements",
    "usage_snippet",
]

HUB_TAGS = ("custom_generate", "speculative-decoding", "hf_cascade")
_FOLDER = "custom_generate"
# What the bundled modules import besides the standard library, with the range used when hf_cascade's own metadata
# is unavailable (a source checkout on PYTHONPATH); transformers brings packaging and huggingface_hub.
_BUNDLE_REQUIREMENTS = {
    "transformers": "transformers>=5.0,<6",
    "torch": "torch>=2.4",
    "safetensors": "safetensors>=0.4",
}

GENERATE_PY = '''"""Cascade Speculative Drafting (hf_cascade) as a transformers `custom_generate` repository.

    model.generate(**inputs, custom_generate="<this repo or folder>", trust_remote_code=True,
                   assistant_models=[assistant], cascade_config={"lenience": 2.0}, max_new_tokens=64)

The other `.py` files of this folder are hf_cascade's generation modules, copied by `hf_cascade.hub.export_hub` from
the package that exported the repository: transformers loads them with this file, so nothing beyond transformers,
torch and safetensors (requirements.txt) is installed. Greedy output is identical to plain `generate`; sampled
output follows the target's distribution. See README.md for the arguments.
"""

from .hub import hub_generate


def generate(*args, **kwargs):
    """Run `model.generate` with the cascade; transformers calls this as `generate(model=model, **arguments)`."""
    config = kwargs.get("cascade_config")
    # An installed hf_cascade's CascadeConfig is another class than this folder's copy: pass its fields instead.
    if config is not None and not isinstance(config, dict) and type(config).__name__ == "CascadeConfig":
        kwargs["cascade_config"] = config.to_dict()
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
    """The lines of an exported `custom_generate/requirements.txt`: what the bundled modules import.

    `transformers`, `torch` and `safetensors` with the version ranges `hf_cascade` itself requires, lower bound first
    (transformers checks these before it runs `generate.py`, and compares only the first bound of each line). No
    `hf_cascade` line: the repository carries its own copy of the generation modules (`bundled_sources`).

    Returns:
        `list[str]`, one requirement per line.
    """
    return [_requirement(name, fallback) for name, fallback in _BUNDLE_REQUIREMENTS.items()]


def _requirement(name: str, fallback: str) -> str:
    """`name` with hf_cascade's own version range for it, lower bound first; `fallback` when not pip-installed."""
    try:
        from packaging.requirements import Requirement

        for line in importlib.metadata.requires("hf_cascade") or []:
            requirement = Requirement(line)
            if requirement.name == name and requirement.marker is None:
                specs = sorted(requirement.specifier, key=lambda s: (not s.operator.startswith(">"), s.version))
                return name + ",".join(str(s) for s in specs)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        pass
    return fallback


def bundled_sources() -> dict[str, str]:
    """The hf_cascade modules an exported `custom_generate/` folder carries, read from the installed package.

    transformers' dynamic-module loader copies (local folder) or downloads (Hub repository) the files that
    `custom_generate/generate.py` imports as `from .name import ...`, recursively, but only siblings in the same
    folder (`transformers.dynamic_module_utils.get_relative_imports`): no subpackage, no `from . import name`, no
    `from ..name import`. So the bundle starts at `hub.py` (`hub_generate`) and follows its relative imports through
    the package's flat modules (`generation`, `cascade`, `config`, ...; never the CLI, the benchmark or `loading`).
    Each file is the installed module's text, generated at export time so the copy cannot drift from the package,
    with a header naming its origin and `from . import __version__` replaced by the version string.

    Returns:
        `dict[str, str]`: file name (e.g. `"cascade.py"`) -> source text.

    Raises:
        `RuntimeError`: a bundled module imports something the loader cannot copy (a subpackage, a parent package,
            `hf_cascade` by absolute name): a packaging bug of hf_cascade, caught by its tests.
    """
    from . import __version__

    package_dir = os.path.dirname(os.path.abspath(__file__))
    sources: dict[str, str] = {}
    pending = ["hub"]
    while pending:
        name = pending.pop()
        if f"{name}.py" in sources:
            continue
        path = os.path.join(package_dir, f"{name}.py")
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for node in ast.walk(ast.parse("\n".join(lines), path)):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and "." not in node.module:
                pending.append(node.module)
            elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                if [alias.name for alias in node.names] != ["__version__"] or node.lineno != node.end_lineno:
                    raise RuntimeError(f"{path}:{node.lineno}: export_hub can only bundle `from . import __version__`")
                indent = lines[node.lineno - 1][: node.col_offset]
                lines[node.lineno - 1] = f"{indent}__version__ = {__version__!r}  # bundled by export_hub"
            elif isinstance(node, ast.ImportFrom) and (node.level > 1 or (node.level == 1 and "." in node.module)):
                raise RuntimeError(f"{path}:{node.lineno}: a bundled module cannot import a subpackage or a parent")
            elif _imports_hf_cascade(node):
                raise RuntimeError(f"{path}:{node.lineno}: a bundled module must import hf_cascade modules relatively")
        header = (
            f"# Copied from hf_cascade {__version__} (hf_cascade/{name}.py) by hf_cascade.hub.export_hub, so that this "
            "repository runs\n# with transformers alone; re-export instead of editing.\n"
        )
        sources[f"{name}.py"] = header + "\n".join(lines)
    return dict(sorted(sources.items()))


def _imports_hf_cascade(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "hf_cascade" for alias in node.names)
    return isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "hf_cascade"


class ExistingFilesError(FileExistsError):
    """`export_hub` refused to replace files of `out_dir`.

    Args:
        out_dir (`str`): the repository folder.
        names (`list[str]`): the files already there, relative to `out_dir`.
        option (`str`): what replaces them, named in the message (`overwrite=True`; the CLI says `--force`).
    """

    def __init__(self, out_dir: str, names: list[str], option: str = "overwrite=True") -> None:
        self.out_dir, self.names = out_dir, list(names)
        shown = ", ".join(self.names[:4]) + (f" and {len(self.names) - 4} more" if len(self.names) > 4 else "")
        super().__init__(f"{out_dir} already has {shown}; pass {option} to replace them.")

    def for_option(self, option: str) -> ExistingFilesError:
        """The same refusal naming another way to overwrite (e.g. the CLI's `--force`)."""
        return ExistingFilesError(self.out_dir, self.names, option)


def export_hub(
    out_dir: str | os.PathLike,
    cascade_config: CascadeConfig | dict | None = None,
    target: str | None = None,
    assistants: list[str] | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write a Hub-ready `custom_generate` repository that runs the cascade with transformers alone.

    Files written (paths relative to `out_dir`):

    - `custom_generate/generate.py`: the entry point, delegating to the bundled `hub.hub_generate`;
    - `custom_generate/*.py`: the hf_cascade modules generation needs (`bundled_sources`), copied from the installed
      package, so users need no `hf_cascade` install;
    - `custom_generate/requirements.txt`: `requirements()` (transformers, torch, safetensors), checked by
      transformers before loading;
    - `README.md`: a model card with YAML metadata (`library_name: transformers`, tags `custom_generate`,
      `speculative-decoding`, `hf_cascade`) documenting the arguments and usage;
    - `cascade_config.json` when `cascade_config` is given, so that `CascadeConfig.from_pretrained(repo_id)` loads it.

    Existing files are refused unless `overwrite=True`. A symbolic link in their place is never written through:
    with `overwrite=True` the link itself is replaced by a regular file (or folder), its target left untouched.

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

    Raises:
        `ExistingFilesError` (a `FileExistsError`): files (or links) already there and `overwrite=False`.
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
    sources = bundled_sources()
    files = {os.path.join(_FOLDER, name): text for name, text in sources.items()}
    files[os.path.join(_FOLDER, "generate.py")] = GENERATE_PY
    files[os.path.join(_FOLDER, "requirements.txt")] = "\n".join(requirements()) + "\n"
    files["README.md"] = _model_card(cascade_config, target, list(assistants or []), repo_id, list(sources))
    if cascade_config is not None:
        files[CONFIG_NAME] = cascade_config.to_json_string()
    folder = os.path.join(out_dir, _FOLDER)
    existing = sorted(
        {name for name in files if os.path.lexists(os.path.join(out_dir, name))}
        | ({_FOLDER} if os.path.islink(folder) else set())
    )
    if existing and not overwrite:
        raise ExistingFilesError(out_dir, existing)
    if os.path.islink(folder):  # replace the link, never write into what it points to
        os.unlink(folder)
    written = []
    for name, text in files.items():
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.islink(path):  # `open(path, "w")` would write to the link's target, maybe outside out_dir
            os.unlink(path)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


def _changed_fields(config: CascadeConfig) -> dict[str, Any]:
    """The fields of `config` that differ from the defaults (`max_gram`: only its changed fields)."""
    defaults = CascadeConfig().to_dict()
    changed = {}
    for name, value in config.to_dict().items():
        if name == "max_gram":
            max_gram = {k: v for k, v in value.items() if v != defaults["max_gram"].get(k)}
            if max_gram:
                changed[name] = max_gram
        elif name in defaults and value != defaults[name]:
            changed[name] = value
    return changed


def config_call(config: CascadeConfig) -> str:
    """Python source building `config` with only its non-default fields, e.g. `CascadeConfig(lenience=2.0)`."""
    return f"hf_cascade.CascadeConfig({', '.join(f'{k}={v!r}' for k, v in _changed_fields(config).items())})"


def usage_snippet(target: str, assistants: list[str], config: CascadeConfig, repo: str | None = None) -> str:
    """A runnable Python example: load `target` and `assistants`, then `generate` with the cascade.

    Args:
        target (`str`): Hub id (or path) of the target model.
        assistants (`list[str]`): Hub ids of the assistant models, largest first (may be empty).
        config (`CascadeConfig`): the configuration the example passes (only its non-default fields are written).
        repo (`str`, *optional*): an exported `custom_generate` repository: the example passes
            `custom_generate=repo, trust_remote_code=True` and the configuration as a dict, so it needs transformers
            alone. `None`: the installed package's `custom_generate=hf_cascade.generate`.

    Returns:
        `str`: the code, without a trailing newline.
    """
    loads = "".join(
        f'assistant_{i} = AutoModelForCausalLM.from_pretrained("{path}", dtype=torch.float32)\n'
        for i, path in enumerate(assistants)
    )
    assistant_list = ", ".join(f"assistant_{i}" for i in range(len(assistants)))
    if repo is None:
        package, method = "\nimport hf_cascade\n", "    custom_generate=hf_cascade.generate,\n"
        config_source = config_call(config)
    else:
        package, method = "", f'    custom_generate="{repo}",\n    trust_remote_code=True,\n'
        config_source = repr(_changed_fields(config))
    return (
        "import torch\n"
        f"from transformers import AutoModelForCausalLM, AutoTokenizer\n{package}\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{target}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{target}", dtype=torch.float32)\n'
        f"{loads}\n"
        'messages = [{"role": "user", "content": "Rewrite in the past tense: I walk to the shop and buy bread."}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)\n"
        "out = model.generate(\n"
        "    **inputs,\n"
        f"{method}"
        f"    assistant_models=[{assistant_list}],\n"
        f"    cascade_config={config_source},\n"
        "    max_new_tokens=64,\n"
        "    do_sample=False,\n"
        ")\n"
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))'
    )


def _model_card(
    config: CascadeConfig | None, target: str | None, assistants: list[str], repo_id: str | None, bundled: list[str]
) -> str:
    from . import __version__

    repo = repo_id or "<user>/<this-repo>"
    usage = usage_snippet(
        target or "<target model id>",
        assistants or ["<assistant model id>"],
        config if config is not None else CascadeConfig(lenience=2.0),
        repo,
    )
    tags = "\n".join(f"  - {tag}" for tag in HUB_TAGS)
    recommended = ""
    if target or assistants:
        lines = [f"- target: `{target}`"] if target else []
        lines += [f"- assistant {i} (largest first): `{name}`" for i, name in enumerate(assistants)]
        recommended = "\n## Recommended models\n\n" + "\n".join(lines) + "\n"
    shipped = ""
    if config is not None:
        shipped = (
            "\n## Shipped configuration\n\n`cascade_config.json`, the configuration of the usage example (with "
            f'hf_cascade installed, `hf_cascade.CascadeConfig.from_pretrained("{repo}")` loads it):\n\n'
            f"```json\n{config.to_json_string()}```\n"
        )
    requirement_lines = "\n".join(requirements())
    bundled_names = ", ".join(f"`{name}`" for name in bundled)
    return f"""---
library_name: transformers
tags:
{tags}
---

# Cascade Speculative Drafting (hf_cascade) for `model.generate`

A [`custom_generate`](https://huggingface.co/docs/transformers/generation_strategies#custom-generation-methods)
repository: `model.generate(..., custom_generate="{repo}", trust_remote_code=True)` runs **Cascade Speculative
Drafting** (Chen et al., [arXiv 2312.11462](https://arxiv.org/abs/2312.11462)) with the generation modules of
`hf_cascade` {__version__}, bundled in `custom_generate/`. Smaller *assistant models* (largest first) and
**Max-Gram**, a drafter that copies earlier text, draft in a vertical and horizontal cascade; the target reviews
every draft exactly.

- **Greedy output is identical**, token for token, to plain `model.generate(..., do_sample=False)`.
- **Sampled output has exactly the target's distribution**, logits processors included.
- **Nothing to install beyond transformers** (with torch and safetensors, which it uses too): transformers loads
  `custom_generate/generate.py` and the modules it imports from this repository.
{recommended}
## Usage

```python
{usage}
```

`cascade_config` takes a dict of `CascadeConfig` fields (or, with the `hf_cascade` package installed, a
`hf_cascade.CascadeConfig`); `{{}}` or omitted: the defaults. With `hf_cascade` installed the same call works without
this repository as `custom_generate=hf_cascade.generate` (no `trust_remote_code`).

## Arguments

Everything `model.generate` accepts, plus:

| argument | type | meaning |
|---|---|---|
| `assistant_models` | `list[PreTrainedModel]`, optional | Neural drafters sharing the target's vocabulary, **largest first**. Empty or omitted: target + Max-Gram only. |
| `cascade_config` | `dict` (or `hf_cascade.CascadeConfig`) or `None` | `k_matrix` (tokens each drafter adds per level), `lenience` (>= 1; loosens reviews between drafters only) and `max_gram` settings. `None`: defaults. |
| `streamer` / `cascade_streamer` | `BaseStreamer`, optional | Receives the prompt, then tokens as the target accepts them, then `end()`. |

Output: as plain `generate`; with `return_dict_in_generate=True` a `CascadeDecoderOnlyOutput` (or
`CascadeEncoderDecoderOutput`) whose `cascade_stats` holds per-model drafted/accepted tokens, forward passes and time.

Not supported (each raises a clear error): batch size > 1, beam search, `num_return_sequences > 1`,
`assistant_model=` (use `assistant_models=[...]`), `output_attentions`/`output_hidden_states`, drafters with a
different vocabulary size, models whose KV cache cannot be cropped.
{shipped}
## Files

`custom_generate/generate.py` is the entry point; {bundled_names} are copies of hf_cascade {__version__}'s modules, written
by `hf-cascade export-hub` (re-export to update them, do not edit them).

## Requirements

```text
{requirement_lines}
```
"""
