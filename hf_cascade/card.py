"""A model-card section "Faster generation with hf_cascade", written from an `hf-cascade bench` results file."""

from __future__ import annotations

import json
import os
from typing import Any

from .benchmark.report import SCHEMA as BENCH_SCHEMA
from .config import CascadeConfig
from .errors import CascadeValueError
from .hub import config_call

__all__ = ["BENCH_SCHEMA", "SECTION_TITLE", "load_bench_results", "model_card_section", "recommended_method"]

SECTION_TITLE = "Faster generation with hf_cascade"
_TOP_KEYS = ("machine", "settings", "methods", "summary")


def load_bench_results(results: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """Read and check a `results.json` written by `hf-cascade bench` (schema `hf_cascade.bench/1`).

    A card must only advertise methods whose output was identical to plain greedy decoding, so a file that records
    any mismatch is refused.

    Args:
        results (`str`, `os.PathLike` or `dict`): the path of the JSON file, or its parsed content.

    Returns:
        `dict`: the parsed results.

    Raises:
        `ValueError`: not JSON, a missing or unknown `schema`, missing fields, or recorded mismatches.
    """
    source = "results"
    if not isinstance(results, dict):
        source = os.fspath(results)
        with open(source, encoding="utf-8") as f:
            try:
                results = json.load(f)
            except json.JSONDecodeError as e:
                raise CascadeValueError(
                    f"{source} is not valid JSON ({e}); pass the results.json of hf-cascade bench."
                ) from e
        if not isinstance(results, dict):
            raise CascadeValueError(
                f"{source} holds a JSON {type(results).__name__}, not the object hf-cascade bench writes."
            )
    schema = results.get("schema")
    if schema is None:
        raise CascadeValueError(
            f"{source} has no 'schema' field, so it is not a results file of hf-cascade bench "
            f"(expected schema {BENCH_SCHEMA!r})."
        )
    if schema != BENCH_SCHEMA:
        raise CascadeValueError(
            f"{source} has schema {schema!r}, which this hf_cascade cannot read (it reads {BENCH_SCHEMA!r}); "
            "rerun the benchmark with this version or upgrade hf_cascade."
        )
    missing = [key for key in _TOP_KEYS if key not in results]
    if missing:
        raise CascadeValueError(f"{source} lacks the field(s) {missing} of schema {BENCH_SCHEMA!r}.")
    mismatches = list(results.get("mismatches") or [])
    not_identical = sorted({row["method"] for row in results["summary"] if row.get("identical") is False})
    if mismatches or not_identical:
        shown = "; ".join(mismatches[:3]) + (f" (+{len(mismatches) - 3} more)" if len(mismatches) > 3 else "")
        raise CascadeValueError(
            f"{source} records outputs that differ from plain greedy decoding "
            f"({shown or 'methods ' + ', '.join(not_identical)}). A card must only advertise identical output: "
            "run the benchmark in float32 and investigate the mismatch first."
        )
    return results


def recommended_method(
    results: dict[str, Any], cascade_config: CascadeConfig | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fastest cascade method with identical output (overall speedup, category `"all"`).

    Args:
        results (`dict`): checked results (`load_bench_results`).
        cascade_config (`CascadeConfig`, *optional*): only consider methods measured with this configuration.

    Returns:
        `(method, summary_row)`: the entry of `results["methods"]` and its overall row of `results["summary"]`.
    """
    overall = {row["method"]: row for row in results["summary"] if row.get("category") == "all"}
    candidates = []
    for method in results["methods"]:
        row = overall.get(method["label"])
        if method.get("kind") != "cascade" or row is None or not row.get("identical") or row.get("speedup") is None:
            continue
        if cascade_config is not None and _method_config(method) != cascade_config:
            continue
        candidates.append((row["speedup"], method, row))
    if not candidates:
        measured = [m["label"] for m in results["methods"] if m.get("kind") == "cascade"]
        if cascade_config is not None:
            raise CascadeValueError(
                "No cascade method of the results was measured with the given cascade config "
                f"({cascade_config.to_dict()}); measured cascade methods: {measured or 'none'}. Pass one of their "
                "configurations, or omit --cascade-config to recommend the fastest."
            )
        raise CascadeValueError(
            f"The results have no cascade method with identical output and a measured overall ('all') speedup "
            f"(cascade methods: {measured or 'none'}); benchmark at least one hf_cascade method."
        )
    _, method, row = max(candidates, key=lambda item: item[0])
    return method, row


def _method_config(method: dict[str, Any]) -> CascadeConfig:
    return CascadeConfig.from_dict(method.get("cascade_config") or {})


def model_card_section(
    results: str | os.PathLike | dict[str, Any], target: str, cascade_config: CascadeConfig | None = None
) -> str:
    """The Markdown section "Faster generation with hf_cascade" for the model card of `target`.

    It holds the recommended assistant models (those of the fastest identical cascade method), its
    `cascade_config.json`, a usage snippet and the measured speedups.

    Args:
        results (`str`, `os.PathLike` or `dict`): `hf-cascade bench` results (path or parsed).
        target (`str`): the Hub id of the model the card describes (used in the usage snippet).
        cascade_config (`CascadeConfig`, *optional*): recommend the method measured with this configuration instead
            of the fastest one.

    Returns:
        `str`: Markdown, starting with `## Faster generation with hf_cascade`.
    """
    if not isinstance(target, str) or not target.strip():
        raise CascadeValueError(f"target must be the model's Hub id or name, got {target!r}.")
    results = load_bench_results(results)
    method, row = recommended_method(results, cascade_config)
    config = _method_config(method)
    drafter_paths = results["settings"].get("drafters") or {}
    drafters = [(name, drafter_paths.get(name, name)) for name in method.get("drafters") or []]

    speedup = row["speedup"]
    if speedup is not None and speedup < 1.0:  # say so plainly: a card must not dress a slowdown up as a gain
        headline = (
            f"model ran at **{speedup:.2f}x** the speed of plain greedy decoding in our benchmark (method "
            f"`{method['label']}`, the fastest cascade measured), with output identical token for token: **on this "
            "hardware the cascade did not pay off**; see the table below before using it."
        )
    else:
        headline = (
            f"model ran **{speedup:.2f}x** as fast as plain greedy decoding in our benchmark "
            f"(method `{method['label']}`), with output identical token for token."
        )
    lines = [
        f"## {SECTION_TITLE}",
        "",
        "With [hf_cascade](https://arxiv.org/abs/2312.11462) (Cascade Speculative Drafting), `generate()` on this "
        + headline,
        "",
        "### Recommended assistant models",
        "",
    ]
    if drafters:
        lines += [
            f"{i + 1}. `{path}`" + (f" ({name})" if name != path else "") for i, (name, path) in enumerate(drafters)
        ]
        lines += ["", "Largest first, as `assistant_models=[...]`; they share this model's tokenizer."]
    else:
        lines += ["None: the target with the Max-Gram drafter alone (`assistant_models=[]`) was fastest."]
    lines += ["", "### cascade_config.json", "", "```json", config.to_json_string().rstrip(), "```", ""]
    lines += ["### Usage", "", "```python", _usage(target, [path for _, path in drafters], config), "```", ""]
    lines += _speedup_tables(results, method["label"])
    return "\n".join(lines).rstrip() + "\n"


def _usage(target: str, assistants: list[str], config: CascadeConfig) -> str:
    loads = "".join(
        f'assistant_{i} = AutoModelForCausalLM.from_pretrained("{path}", dtype=torch.float32)\n'
        for i, path in enumerate(assistants)
    )
    assistant_list = ", ".join(f"assistant_{i}" for i in range(len(assistants)))
    return (
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        "import hf_cascade  # pip install hf_cascade\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{target}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{target}", dtype=torch.float32)\n'
        f"{loads}"
        'messages = [{"role": "user", "content": "Rewrite in the past tense: I walk to the shop."}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)\n"
        "out = model.generate(\n"
        "    **inputs,\n"
        "    custom_generate=hf_cascade.generate,\n"
        f"    assistant_models=[{assistant_list}],\n"
        f"    cascade_config={config_call(config)},\n"
        "    max_new_tokens=128,\n"
        "    do_sample=False,\n"
        ")\n"
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))'
    )


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _speedup_tables(results: dict[str, Any], recommended: str) -> list[str]:
    settings, machine = results["settings"], results["machine"]
    kinds = {m["label"]: m for m in results["methods"]}
    hardware = machine.get("gpu") or (
        f"{machine.get('cpu', 'unknown CPU')}, {machine.get('logical_cpus', '?')} logical CPUs, "
        f"{machine.get('torch_threads', '?')} torch threads"
    )
    lines = [
        "### Measured speedups",
        "",
        f"`hf-cascade bench`: target `{settings.get('target', '?')}`, {settings.get('dtype', '?')} on "
        f"{settings.get('device', '?')} ({hardware}); torch {machine.get('torch', '?')}, transformers "
        f"{machine.get('transformers', '?')}, hf_cascade {machine.get('hf_cascade', '?')}; "
        f"{settings.get('max_new_tokens', '?')} new tokens, {settings.get('repeats', '?')} repeats"
        + (", chat template" if settings.get("chat_template") else "")
        + ". Speedup: geometric mean over prompts of tokens/s relative to greedy. Every method's output was identical "
        "to greedy.",
        "",
        "| method | kind | drafters | tokens/s | speedup | tokens per target forward |",
        "|---|---|---|---|---|---|",
    ]
    rows = [row for row in results["summary"] if row.get("category") == "all"]
    for row in rows:
        method = kinds.get(row["method"], {})
        label = f"**{row['method']}** (recommended)" if row["method"] == recommended else row["method"]
        drafters = ", ".join(method.get("drafters") or []) or "-"
        lines.append(
            f"| {label} | {method.get('kind', '?')} | {drafters} | {_fmt(row.get('tokens_per_s'), '.1f')} | "
            f"{_fmt(row.get('speedup'), '.2f', 'x')} | {_fmt(row.get('tokens_per_target_forward'), '.2f')} |"
        )
    categories = sorted({row["category"] for row in results["summary"] if row.get("category") != "all"})
    if categories:
        labels = [row["method"] for row in rows]
        by_key = {(row["method"], row["category"]): row for row in results["summary"]}
        lines += ["", "Speedup by prompt category:", ""]
        lines.append("| category | prompts | " + " | ".join(labels) + " |")
        lines.append("|---|---|" + "---|" * len(labels))
        for category in categories:
            cells = [_fmt(by_key.get((label, category), {}).get("speedup"), ".2f", "x") for label in labels]
            prompts = next(
                (by_key[(label, category)].get("prompts") for label in labels if (label, category) in by_key), "?"
            )
            lines.append(f"| {category} | {prompts} | " + " | ".join(cells) + " |")
    acceptance = next((row.get("acceptance") for row in rows if row["method"] == recommended), None) or {}
    if acceptance:
        lines += ["", f"Acceptance rates of `{recommended}` (accepted / drafted tokens per model):", ""]
        lines += ["| model | acceptance |", "|---|---|"]
        lines += [f"| {level} | {_fmt(rate, '.0%')} |" for level, rate in acceptance.items()]
    return lines
