"""A model-card section "Faster generation with hf_cascade", written from an `hf-cascade bench` results file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .benchmark.report import SCHEMA as BENCH_SCHEMA
from .benchmark.report import SummaryRow, fmt
from .config import CascadeConfig
from .errors import CascadeValueError
from .hub import usage_snippet

__all__ = [
    "BENCH_SCHEMA",
    "SECTION_TITLE",
    "BenchResults",
    "load_bench_results",
    "model_card_section",
    "recommended_method",
]

SECTION_TITLE = "Faster generation with hf_cascade"
_TOP_KEYS = ("machine", "settings", "methods", "summary")


@dataclass
class BenchResults:
    """A checked `results.json` of `hf-cascade bench`: what a model card needs from it.

    Args:
        machine (`dict`): where it ran (`machine_info()`).
        settings (`dict`): how it ran (target, drafters, dtype, device, ...).
        methods (`list[dict]`): `label`, `kind`, `drafters` (`list[str]`) and `cascade_config` (`dict` or `None`).
        summary (`list[SummaryRow]`): one row per method and category.
        mismatches (`list[str]`): recorded differences from greedy (always empty once loaded: such files are refused).
        source (`str`): the file, or `"results"` for a parsed dict (named in error messages).
    """

    machine: dict[str, Any]
    settings: dict[str, Any]
    methods: list[dict[str, Any]]
    summary: list[SummaryRow]
    mismatches: list[str] = field(default_factory=list)
    source: str = "results"


def load_bench_results(results: str | os.PathLike | dict[str, Any] | BenchResults) -> BenchResults:
    """Read and check a `results.json` written by `hf-cascade bench` (schema `hf_cascade.bench/1`).

    Every field the card uses is checked (type, and for numbers: finite, speedups > 0), so a damaged file is refused
    with its name, the field and what is wrong instead of failing later or printing "nanx". A card must only
    advertise methods whose output was identical to plain greedy decoding, so a file that records any mismatch is
    refused too.

    Args:
        results (`str`, `os.PathLike`, `dict` or `BenchResults`): the path of the JSON file, or its parsed content.

    Returns:
        `BenchResults`: the checked results.

    Raises:
        `CascadeValueError` (a `ValueError`): not JSON, a missing or unknown `schema`, missing or malformed fields,
            or recorded mismatches. `OSError`: the file cannot be read.
    """
    if isinstance(results, BenchResults):
        return results
    source = "results"
    if not isinstance(results, dict):
        source = os.fspath(results)
        with open(source, encoding="utf-8") as f:
            try:
                results = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
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
    for key, kind in (("machine", dict), ("settings", dict), ("methods", list), ("summary", list)):
        _expect(results[key], kind, f"{source}: field {key!r}")
    mismatches = results.get("mismatches") or []
    _expect(mismatches, list, f"{source}: field 'mismatches'")
    if not all(isinstance(m, str) for m in mismatches):
        raise CascadeValueError(f"{source}: field 'mismatches' must be a list of strings, got {mismatches!r}.")
    drafters = results["settings"].get("drafters") or {}
    _expect(drafters, dict, f"{source}: field 'settings.drafters'")
    methods = [_method(m, f"{source}: methods[{i}]") for i, m in enumerate(results["methods"])]
    summary = [SummaryRow.from_dict(row, f"{source}: summary[{i}]") for i, row in enumerate(results["summary"])]
    labels = {m["label"] for m in methods}
    for i, row in enumerate(summary):
        if row.method not in labels:
            raise CascadeValueError(
                f"{source}: summary[{i}] is about method {row.method!r}, which 'methods' does not list "
                f"(methods: {sorted(labels)})."
            )
    not_identical = sorted({row.method for row in summary if not row.identical})
    if mismatches or not_identical:
        shown = "; ".join(mismatches[:3]) + (f" (+{len(mismatches) - 3} more)" if len(mismatches) > 3 else "")
        raise CascadeValueError(
            f"{source} records outputs that differ from plain greedy decoding "
            f"({shown or 'methods ' + ', '.join(not_identical)}). A card must only advertise identical output: "
            "run the benchmark in float32 and investigate the mismatch first."
        )
    return BenchResults(results["machine"], results["settings"], methods, summary, list(mismatches), source)


def _expect(value: Any, kind: type, where: str) -> None:
    if not isinstance(value, kind):
        name = {dict: "an object", list: "a list"}[kind]
        raise CascadeValueError(f"{where} must be {name}, got {json.dumps(value)[:80]}.")


def _method(method: Any, where: str) -> dict[str, Any]:
    """Check one entry of `methods`; its `cascade_config` must load as a `CascadeConfig`."""
    _expect(method, dict, where)
    for key in ("label", "kind"):
        if not isinstance(method.get(key), str) or not method[key]:
            raise CascadeValueError(f"{where}: field {key!r} must be a non-empty string, got {method.get(key)!r}.")
    drafters = method.get("drafters") or []
    if not isinstance(drafters, list) or not all(isinstance(d, str) for d in drafters):
        raise CascadeValueError(f"{where}: field 'drafters' must be a list of names, got {drafters!r}.")
    config = method.get("cascade_config")
    if config is not None:
        _expect(config, dict, f"{where}: field 'cascade_config'")
        try:
            CascadeConfig.from_dict(config)
        except (TypeError, ValueError) as e:  # CascadeError, or a field from_dict does not know
            raise CascadeValueError(f"{where}: field 'cascade_config' is not a valid CascadeConfig: {e}") from e
    return {**method, "drafters": drafters}


def recommended_method(
    results: BenchResults, cascade_config: CascadeConfig | None = None
) -> tuple[dict[str, Any], SummaryRow]:
    """The fastest cascade method with identical output (overall speedup, category `"all"`).

    Args:
        results (`BenchResults`): checked results (`load_bench_results`).
        cascade_config (`CascadeConfig`, *optional*): only consider methods measured with this configuration.

    Returns:
        `(method, summary_row)`: the entry of `results.methods` and its overall row of `results.summary`.
    """
    overall = {row.method: row for row in results.summary if row.category == "all"}
    candidates = []
    for method in results.methods:
        row = overall.get(method["label"])
        if method["kind"] != "cascade" or row is None or not row.identical or row.speedup is None:
            continue
        if cascade_config is not None and _method_config(method) != cascade_config:
            continue
        candidates.append((row.speedup, method, row))
    if not candidates:
        measured = [m["label"] for m in results.methods if m["kind"] == "cascade"]
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
    results: str | os.PathLike | dict[str, Any] | BenchResults, target: str, cascade_config: CascadeConfig | None = None
) -> str:
    """The Markdown section "Faster generation with hf_cascade" for the model card of `target`.

    It holds the recommended assistant models (those of the fastest identical cascade method), its
    `cascade_config.json`, a usage snippet and the measured speedups.

    Args:
        results (`str`, `os.PathLike`, `dict` or `BenchResults`): `hf-cascade bench` results (path or parsed).
        target (`str`): the Hub id of the model the card describes (used in the usage snippet).
        cascade_config (`CascadeConfig`, *optional*): recommend the method measured with this configuration instead
            of the fastest one.

    Returns:
        `str`: Markdown, starting with `## Faster generation with hf_cascade`.

    Raises:
        `CascadeValueError`: bad `target`, results that `load_bench_results` refuses, or no method to recommend.
    """
    if not isinstance(target, str) or not target.strip():
        raise CascadeValueError(f"target must be the model's Hub id or name, got {target!r}.")
    results = load_bench_results(results)
    method, row = recommended_method(results, cascade_config)
    config = _method_config(method)
    drafter_paths = results.settings.get("drafters") or {}
    drafters = [(name, drafter_paths.get(name, name)) for name in method["drafters"]]

    speedup = row.speedup
    if speedup < 1.0:  # say so plainly: a card must not dress a slowdown up as a gain
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
    usage = usage_snippet(target, [path for _, path in drafters], config)
    lines += ["### Usage", "", "```python", usage, "```", ""]
    lines += _speedup_tables(results, method["label"])
    return "\n".join(lines).rstrip() + "\n"


def _na(value: float | None, spec: str, suffix: str = "") -> str:
    return fmt(value, spec, suffix, missing="n/a")


def _speedup_tables(results: BenchResults, recommended: str) -> list[str]:
    settings, machine = results.settings, results.machine
    kinds = {m["label"]: m for m in results.methods}
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
    rows = [row for row in results.summary if row.category == "all"]
    for row in rows:
        method = kinds[row.method]
        label = f"**{row.method}** (recommended)" if row.method == recommended else row.method
        drafters = ", ".join(method["drafters"]) or "-"
        lines.append(
            f"| {label} | {method['kind']} | {drafters} | {_na(row.tokens_per_s, '.1f')} | "
            f"{_na(row.speedup, '.2f', 'x')} | {_na(row.tokens_per_target_forward, '.2f')} |"
        )
    categories = sorted({row.category for row in results.summary if row.category != "all"})
    if categories:
        labels = [row.method for row in rows]
        by_key = {(row.method, row.category): row for row in results.summary}
        lines += ["", "Speedup by prompt category:", ""]
        lines.append("| category | prompts | " + " | ".join(labels) + " |")
        lines.append("|---|---|" + "---|" * len(labels))
        for category in categories:
            cells = [
                _na(by_key[(label, category)].speedup if (label, category) in by_key else None, ".2f", "x")
                for label in labels
            ]
            prompts = next((by_key[(label, category)].prompts for label in labels if (label, category) in by_key), "?")
            lines.append(f"| {category} | {prompts} | " + " | ".join(cells) + " |")
    acceptance = next((row.acceptance for row in rows if row.method == recommended), None) or {}
    if acceptance:
        lines += ["", f"Acceptance rates of `{recommended}` (accepted / drafted tokens per model):", ""]
        lines += ["| model | acceptance |", "|---|---|"]
        lines += [f"| {level} | {_na(rate, '.0%')} |" for level, rate in acceptance.items()]
    return lines
