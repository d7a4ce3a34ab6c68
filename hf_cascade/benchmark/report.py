"""Turn a `BenchmarkResult` into summaries (per method and category), `results.json`, Markdown and a PNG plot.

Definitions (all per prompt, then aggregated over the prompts of a category):

- tokens/s: new tokens / median wall time over repeats; a category's tokens/s is total tokens / total median time.
- speedup: a method's tokens/s over greedy's on the same prompt; categories report the geometric mean.
- SWI (standardized walltime improvement, the CS Drafting paper's metric): greedy's cost over the method's cost,
  where a cost is the sum over models of forward passes x a fixed cost per pass: the parameter count (`swi_params`)
  or the measured 1-token forward latency (`swi_latency`; of a drafter as the run ran it: its `NAME (packed)` cost
  for a cascade run that packed it, `CascadeConfig.pack_drafters`). It ignores that a k-token pass costs more than a
  1-token pass and every cost outside forward passes: the measured speedup is the number that counts.
- outside-forward fraction: wall time outside any model's forward pass (drafting logic, Max-Gram, Python) / wall time.
- acceptance: for cascade levels, draft tokens the reviewer accepted / draft tokens proposed (bonus and correction
  tokens are not counted as accepted); `max_gram (memory)`: the same for the Max-Gram tokens copied from a
  `MaxGramMemory` (earlier calls), a part of `max_gram`'s.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import CascadeValueError
from ..stats import format_fitted_cost
from .runner import BenchmarkResult, ModelCost, PromptResult

__all__ = [
    "SCHEMA",
    "SummaryRow",
    "categories",
    "cost_table",
    "fmt",
    "memory_label",
    "not_run_text",
    "summarize",
    "summary_table",
    "to_json_dict",
    "to_markdown",
    "write_plot",
    "write_reports",
]

SCHEMA = "hf_cascade.bench/1"


@dataclass
class SummaryRow:
    """One method over the prompts of one category (`"all"`: every prompt); a row of `results.json`'s `summary`.

    Args:
        method (`str`): the method's label.
        category (`str`): the prompt category, or `"all"`.
        prompts (`int`): number of prompts.
        new_tokens (`int`): new tokens over the prompts (median runs).
        seconds (`float`): wall time over the prompts (median runs).
        tokens_per_s (`float`, *optional*): `new_tokens / seconds`.
        speedup (`float`, *optional*): geometric mean over prompts of tokens/s relative to greedy; `None` when no
            prompt had a measurable time.
        target_forwards (`int`): forward passes of the target.
        tokens_per_target_forward (`float`, *optional*): `new_tokens / target_forwards`.
        swi_params (`float`, *optional*): SWI with parameter counts as the cost of a pass.
        swi_latency (`float`, *optional*): SWI with measured 1-token latencies as the cost of a pass.
        outside_forward_fraction (`float`, *optional*): share of the wall time outside any forward pass.
        acceptance (`dict[str, float | None]`): per drafter, accepted / drafted tokens.
        levels (`dict[str, dict]`): per model: `forward_passes`, `forward_s`, for cascade methods
            `drafts_reviewed`, `draft_tokens_reviewed` and `skipped` (the draft-length controller), for drafters
            `drafted`, `accepted`, optionally `fitted_cost` (`[draft_cost, token_cost]`) and, for Max-Gram with a
            memory, `memory_drafted` and `memory_accepted` (part of `drafted`/`accepted`).
        identical (`bool`): every run of every prompt produced greedy's tokens.
    """

    method: str
    category: str
    prompts: int
    new_tokens: int
    seconds: float
    tokens_per_s: float | None
    speedup: float | None
    target_forwards: int
    tokens_per_target_forward: float | None
    swi_params: float | None
    swi_latency: float | None
    outside_forward_fraction: float | None
    acceptance: dict[str, float | None] = field(default_factory=dict)
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    identical: bool = True

    @property
    def outside_forward_percent(self) -> float | None:
        """`outside_forward_fraction` in percent."""
        return None if self.outside_forward_fraction is None else 100 * self.outside_forward_fraction

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of schema `hf_cascade.bench/1` (same keys as the fields)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SummaryRow:
        """Check and read a summary row of `results.json`; refuses what a report must never print (nan, speedups <= 0).

        Args:
            data (`dict`): the row as parsed from JSON. `method`, `category` and `identical` are required; the other
                fields may be missing (older files) and default to `None`/0/empty.
            where (`str`): where the row comes from, for messages (e.g. `"results.json: summary[3]"`).

        Raises:
            `CascadeValueError`: naming `where`, the field, its value and what it must be.
        """
        if not isinstance(data, dict):
            raise CascadeValueError(f"{where} is a JSON {type(data).__name__}, not an object (one summary row).")
        values = {}
        for f in fields(cls):
            value = data.get(f.name)
            if value is None and f.name in _ROW_DEFAULTS:  # missing or null: older files lack some fields
                default = _ROW_DEFAULTS[f.name]
                values[f.name] = dict(default) if isinstance(default, dict) else default
                continue
            check = _ROW_CHECKS[f.name]
            if not check[0](value):
                raise CascadeValueError(
                    f"{where}: field {f.name!r} is {value!r}; it must be {check[1]}. The file was edited or written "
                    "by a broken run: rerun hf-cascade bench."
                )
            values[f.name] = value
        return cls(**values)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fraction(value: Any) -> bool:
    return value is None or (_number(value) and 0 <= value <= 1)


def _positive(value: Any) -> bool:
    return value is None or (_number(value) and value > 0)


# field -> (check, what it must be); fields in _ROW_DEFAULTS may be missing or null.
_ROW_CHECKS = {
    "method": (lambda v: isinstance(v, str) and bool(v), "a non-empty string (a method label)"),
    "category": (lambda v: isinstance(v, str) and bool(v), "a non-empty string (a category or 'all')"),
    "prompts": (_count, "an integer >= 0"),
    "new_tokens": (_count, "an integer >= 0"),
    "seconds": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "tokens_per_s": (_positive, "a finite number > 0 or null"),
    "speedup": (_positive, "a finite number > 0 or null (a ratio of tokens/s)"),
    "target_forwards": (_count, "an integer >= 0"),
    "tokens_per_target_forward": (_positive, "a finite number > 0 or null"),
    "swi_params": (_positive, "a finite number > 0 or null"),
    "swi_latency": (_positive, "a finite number > 0 or null"),
    "outside_forward_fraction": (_fraction, "a number from 0 to 1 or null"),
    "acceptance": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and _fraction(r) for k, r in v.items()),
        "an object of model name -> number from 0 to 1 or null",
    ),
    "levels": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, dict) for k, x in v.items()),
        "an object of model name -> object",
    ),
    "identical": (lambda v: isinstance(v, bool), "true or false"),
}
_ROW_DEFAULTS: dict[str, Any] = {
    "prompts": 0,
    "new_tokens": 0,
    "seconds": 0.0,
    "tokens_per_s": None,
    "speedup": None,
    "target_forwards": 0,
    "tokens_per_target_forward": None,
    "swi_params": None,
    "swi_latency": None,
    "outside_forward_fraction": None,
    "acceptance": {},
    "levels": {},
}


def fmt(value: float | None, spec: str, suffix: str = "", missing: str = "-") -> str:
    """`value` formatted with `spec` and `suffix`, or `missing` when it is `None` (e.g. `fmt(1.234, ".2f", "x")`)."""
    return missing if value is None else f"{value:{spec}}{suffix}"


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _level_names(result: BenchmarkResult, label: str) -> dict[str, str]:
    """Cascade stats name assistants by position; reports use the names the drafters were registered under."""
    method = next(m for m in result.methods if m.label == label)
    return {f"assistant_{i}": name for i, name in enumerate(method.drafters)}


def memory_label(name: str) -> str:
    """How reports name the part of a Max-Gram level's drafts copied from a `MaxGramMemory`."""
    return f"{name} (memory)"


def _mean_draft(level: dict[str, Any]) -> float | None:
    """Mean length of the drafts a model reviewed (`None` for none, or a file written before it was recorded)."""
    reviewed = level.get("drafts_reviewed")
    return level["draft_tokens_reviewed"] / reviewed if reviewed else None


def _skipped(level: dict[str, Any]) -> str:
    """The skipped column (`LevelStats.skipped`)."""
    return str(level.get("skipped", "-"))


def _fitted(cost: list[float] | None) -> str:
    return format_fitted_cost(*cost) if cost else "-"


def _cost(run: Any, costs: dict[str, float]) -> float:
    return sum(passes * costs[name] for name, passes in run.forward_passes.items())


def _packed_drafters(run: Any, names: dict[str, str]) -> dict[str, int]:
    """The drafters `run` ran on oneDNN-packed copies (`LevelStats.packing`), by report name, with the layers packed."""
    return {
        names.get(level["name"], level["name"]): level.get("packed_layers", 0)
        for level in run.levels
        if level.get("packing") == "packed"
    }


def _as_run(costs: dict[str, Any], run: Any, names: dict[str, str]) -> dict[str, Any]:
    """`costs` with each drafter the run packed priced at its `NAME (packed)` entry, where the benchmark measured
    one."""
    packed = _packed_drafters(run, names)
    return {name: costs.get(f"{name} (packed)", cost) if name in packed else cost for name, cost in costs.items()}


def _summary_row(result: BenchmarkResult, label: str, category: str, prompts: list[PromptResult]) -> SummaryRow:
    reference = result.methods[0].label
    names = _level_names(result, label)
    tokens = seconds = outside = 0.0
    target_forwards = 0
    speedups, swi_params, swi_latency = [], [], []
    levels: dict[str, dict[str, Any]] = {}
    fitted: dict[str, list[tuple[float, float]]] = {}
    params = {name: cost.parameters for name, cost in result.costs.items()}
    latency = {name: cost.forward_s.get(1) for name, cost in result.costs.items()}
    identical = True
    for p in prompts:
        runs, ref_runs = p.runs[label], p.runs[reference]
        run, ref = p.median_run(label), p.median_run(reference)
        identical = identical and all(r.ids == ref_runs[0].ids for r in runs)
        tokens += run.new_tokens
        seconds += run.seconds
        outside += run.outside_forward_seconds
        target_forwards += run.forward_passes.get("target", 0)
        if run.seconds > 0 and ref.seconds > 0 and ref.new_tokens:
            speedups.append((run.new_tokens / run.seconds) / (ref.new_tokens / ref.seconds))
        if params and _cost(run, params):
            swi_params.append(_cost(ref, params) / _cost(run, params))
        run_latency = _as_run(latency, run, names)
        if latency and all(v is not None for v in latency.values()) and _cost(run, run_latency):
            swi_latency.append(_cost(ref, latency) / _cost(run, run_latency))
        for name, passes in run.forward_passes.items():
            level = levels.setdefault(name, {"forward_passes": 0, "forward_s": 0.0})
            level["forward_passes"] += passes
            level["forward_s"] += run.forward_seconds[name]
        for stats in run.levels:
            name = "target" if stats["kind"] == "target" else names.get(stats["name"], stats["name"])
            if stats.get("draft_cost") is not None:  # MaxGramConfig.measure_cost: fitted to this model's timings
                fitted.setdefault(name, []).append((stats["draft_cost"], stats["token_cost"]))
            level = levels.setdefault(name, {"forward_passes": 0, "forward_s": 0.0})
            for key in ("drafts_reviewed", "draft_tokens_reviewed", "skipped"):  # the controller
                level[key] = level.get(key, 0) + stats.get(key, 0)
            if stats["kind"] == "target":
                continue
            level["drafted"] = level.get("drafted", 0) + stats["drafted"]
            level["accepted"] = level.get("accepted", 0) + stats["accepted"]
            if stats["kind"] == "max_gram":
                level["forward_s"] += stats["propose_time_s"]  # Max-Gram's cost is its proposal time
                if stats.get("memory_drafted"):  # copied from a MaxGramMemory (absent in older results)
                    level["memory_drafted"] = level.get("memory_drafted", 0) + stats["memory_drafted"]
                    level["memory_accepted"] = level.get("memory_accepted", 0) + stats["memory_accepted"]
    for name, costs in fitted.items():
        level = levels.setdefault(name, {"forward_passes": 0, "forward_s": 0.0})
        level["fitted_cost"] = [statistics.median(c[0] for c in costs), statistics.median(c[1] for c in costs)]
    acceptance = {
        name: (level["accepted"] / level["drafted"] if level["drafted"] else None)
        for name, level in levels.items()
        if "drafted" in level
    }
    for name, level in levels.items():
        if level.get("memory_drafted"):
            acceptance[memory_label(name)] = level["memory_accepted"] / level["memory_drafted"]
    return SummaryRow(
        method=label,
        category=category,
        prompts=sum(p.prompt_count for p in prompts),
        new_tokens=int(tokens),
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds else None,
        speedup=_geomean(speedups),
        target_forwards=target_forwards,
        tokens_per_target_forward=tokens / target_forwards if target_forwards else None,
        swi_params=_geomean(swi_params),
        swi_latency=_geomean(swi_latency),
        outside_forward_fraction=outside / seconds if seconds else None,
        acceptance=acceptance,
        levels=levels,
        identical=identical,
    )


def categories(result: BenchmarkResult) -> list[str]:
    """Categories in order of first appearance."""
    return list(dict.fromkeys(p.prompt.category for p in result.prompts))


def summarize(result: BenchmarkResult) -> list[SummaryRow]:
    """One summary row per method and category, then per method over all prompts (`category == "all"`)."""
    rows = []
    groups = [(c, [p for p in result.prompts if p.prompt.category == c]) for c in categories(result)]
    if len(groups) > 1:
        groups.append(("all", result.prompts))
    elif groups:
        groups = [("all", result.prompts)]
    for category, prompts in groups:
        for method in result.methods:
            rows.append(_summary_row(result, method.label, category, prompts))
    return rows


def to_json_dict(result: BenchmarkResult) -> dict[str, Any]:
    """`results.json`: settings, machine, methods, per-model costs, every run, the summary and any mismatches."""
    return {
        "schema": SCHEMA,
        "machine": result.machine,
        "settings": result.settings,
        "wall_time_s": result.wall_time_s,
        "methods": [
            {
                "label": m.label,
                "kind": m.kind,
                "drafters": list(m.drafters),
                "cascade_config": (m.cascade_config.to_dict() if m.cascade_config else None)
                if m.kind == "cascade"
                else None,
            }
            for m in result.methods
        ],
        "costs": {
            name: {"parameters": c.parameters, "forward_s": {str(k): v for k, v in c.forward_s.items()}}
            for name, c in result.costs.items()
        },
        "prompts": [
            {
                "id": p.id,
                "turn": p.turn,
                "category": p.prompt.category,
                "prompt_tokens": p.prompt_tokens,
                "runs": {label: [_run_dict(r) for r in runs] for label, runs in p.runs.items()},
                **({"batch": [q.id for q in p.batch]} if p.batch else {}),
            }
            for p in result.prompts
        ],
        "summary": [row.to_dict() for row in summarize(result)],
        "mismatches": [str(m) for m in result.mismatches],
        **({"not_run": result.not_run} if result.not_run else {}),
    }


def _run_dict(run: Any) -> dict[str, Any]:
    """A run as `results.json` records it (`rows` only for a batch, so one-prompt files keep their keys)."""
    d = asdict(run)
    if not d["rows"]:
        del d["rows"]
    return d


def _batch_size(result: BenchmarkResult) -> int:
    return result.settings.get("batch_size", 1)


THROUGHPUT = "throughput (tok/s over the batch)"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _packing(settings: dict) -> str:
    return " (linear layers packed for oneDNN, all methods)" if settings.get("onednn_linear") else ""


def drafter_packing_lines(result: BenchmarkResult) -> list[str]:
    """A line per cascade method whose drafters the cascade ran on oneDNN-packed copies (`CascadeConfig.pack_drafters`),
    naming them and the layers packed; none when no run packed one."""
    lines = []
    for method in result.methods:
        names = _level_names(result, method.label) if method.kind == "cascade" else {}
        packed = {
            name: layers
            for p in result.prompts
            for run in p.runs.get(method.label, [])
            for name, layers in _packed_drafters(run, names).items()
        }
        if packed:
            which = ", ".join(f"`{name}` ({layers} linear layers)" for name, layers in packed.items())
            lines.append(
                f"- `{method.label}` ran its drafters {which} on oneDNN-packed copies (`CascadeConfig.pack_drafters`; "
                "other methods use them as loaded)"
            )
    return lines


def summary_table(rows: list[SummaryRow], rate: str = "tok/s") -> list[str]:
    """The Markdown table of `summarize` rows (category, method, tok/s, speedup, forwards, SWI, identical), as lines;
    `rate` heads the tok/s column (`THROUGHPUT` for batches)."""
    lines = [
        f"| category | method | prompts | {rate} | speedup (geomean) | target fwd | tok/target fwd | SWI params "
        "| SWI latency | outside fwd | identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.category} | {r.method} | {r.prompts} | {fmt(r.tokens_per_s, '.2f')} "
            f"| {fmt(r.speedup, '.2f', 'x')} | {r.target_forwards} | {fmt(r.tokens_per_target_forward, '.2f')} "
            f"| {fmt(r.swi_params, '.2f')} | {fmt(r.swi_latency, '.2f')} | {fmt(r.outside_forward_percent, '.1f', '%')} "
            f"| {'yes' if r.identical else '**NO**'} |"
        )
    return lines


def cost_table(costs: dict[str, ModelCost]) -> list[str]:
    """The Markdown table of measured forward costs (median ms per k-token forward, and relative to 1 token), with
    the sentence that explains it, as lines."""
    ks = sorted({k for c in costs.values() for k in c.forward_s})
    lines = [
        "Median seconds of a k-token forward with a warm KV cache (first prompt as context); "
        "relative to the 1-token pass in brackets.",
        "",
        "| model | parameters | " + " | ".join(f"{k} token{'s' if k > 1 else ''}" for k in ks) + " |",
        "|---|---:|" + "---:|" * len(ks),
    ]
    for name, c in costs.items():
        one = c.forward_s.get(1)
        cells = [
            f"{c.forward_s[k] * 1000:.1f} ms ({c.forward_s[k] / one:.2f}x)" if one else f"{c.forward_s[k]:.4f}"
            for k in ks
        ]
        size = f"{c.parameters / 1e6:.1f}M" if c.parameters >= 1e5 else str(c.parameters)
        lines.append(f"| {name} | {size} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(result: BenchmarkResult, command: str | None = None) -> str:
    """A Markdown report: what ran on which machine, the summary per category, per-level numbers and costs."""
    from .machine import describe_machine

    s = result.settings
    lines = ["# hf_cascade benchmark", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    lines += [
        f"- machine: {describe_machine(result.machine)}" if result.machine else "- machine: (not recorded)",
        f"- target: `{s.get('target')}`; drafters: "
        + (", ".join(f"`{k}` = `{v}`" for k, v in s.get("drafters", {}).items()) or "none"),
        f"- {s.get('dtype')} on {s.get('device')}{_packing(s)}, greedy, up to {s.get('max_new_tokens')} new tokens, "
        f"chat template {'on' if s.get('chat_template', True) else 'off'}; {s.get('repeats')} interleaved timed "
        f"repeat(s) per prompt after a warm-up, medians; {sum(p.prompt_count for p in result.prompts)} prompts; "
        f"benchmark wall time {_duration(result.wall_time_s)}",
        *drafter_packing_lines(result),
        *(
            [f"- warm start: the methods that remember started from the Max-Gram memory `{s['memory']}`"]
            if s.get("memory")
            else []
        ),
        *(
            [
                f"- batch size {_batch_size(result)}: each category's prompts in batches of {_batch_size(result)} "
                "(in order, the last one smaller), left-padded, one `generate` call per batch and method; "
                f"{THROUGHPUT} = new tokens of all rows (each up to and including its EOS) / the batch's wall time; "
                "speedup = throughput over plain batched greedy's; every row checked against greedy's row"
            ]
            if _batch_size(result) > 1
            else []
        ),
        "",
    ]
    if result.not_run:
        lines += ["## Not run", "", *[f"- {name}: {not_run_text(why)}" for name, why in result.not_run.items()], ""]
    if result.mismatches:
        lines += ["## OUTPUT MISMATCHES", "", *[f"- {m}" for m in result.mismatches], ""]
    else:
        lines += ["Every run of every method produced exactly greedy's tokens.", ""]
    rows = summarize(result)
    rate = THROUGHPUT if _batch_size(result) > 1 else "tok/s"
    lines += ["## Summary", "", *summary_table(rows, rate)]
    lines += [
        "",
        "## Where the time goes (all prompts)",
        "",
        "Per model: forward passes and seconds inside them (Max-Gram: proposal time), draft tokens proposed and "
        "accepted by the reviewer (cascade methods; `max_gram (memory)`: the part of Max-Gram's drafts copied from "
        "a `MaxGramMemory`); fitted cost: the `draft_cost + token_cost * k` fitted to the "
        "model's own timed forward passes (`MaxGramConfig.measure_cost`; median over runs), which sets the length of "
        "the Max-Gram drafts it reviews; mean draft: the mean length of the drafts the model reviewed, and skipped: "
        "the times the draft-length controller skipped the drafter at a level (`CascadeConfig.adaptive_drafters`; in "
        "a batch, per row, the steps the batch's plan left it out of).",
        "",
        "| method | model | forward passes | seconds | drafted | accepted | acceptance | fitted cost | mean draft "
        "| skipped |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        if r.category != "all":
            continue
        for name, level in r.levels.items():
            lines.append(
                f"| {r.method} | {name} | {level['forward_passes']} | {level['forward_s']:.2f} "
                f"| {level.get('drafted', '-')} | {level.get('accepted', '-')} "
                f"| {fmt(r.acceptance.get(name), '.2f')} | {_fitted(level.get('fitted_cost'))} "
                f"| {fmt(_mean_draft(level), '.2f')} | {_skipped(level)} |"
            )
            if level.get("memory_drafted"):  # of the row above: the drafts copied from the memory
                lines.append(
                    f"| {r.method} | {memory_label(name)} | - | - | {level['memory_drafted']} "
                    f"| {level['memory_accepted']} | {fmt(r.acceptance.get(memory_label(name)), '.2f')} | - | - | - |"
                )
    if result.costs:
        lines += ["", "## Cost of a forward pass", "", *cost_table(result.costs)]
    lines += ["", "## Per prompt", "", "Speedup over greedy (median time) and new tokens.", ""]
    labels = [m.label for m in result.methods]
    lines += [
        "| prompt | category | prompt tokens | new tokens | greedy s | " + " | ".join(labels[1:]) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * (len(labels) - 1),
    ]
    for p in result.prompts:
        greedy = p.median_run(labels[0]).seconds
        cells = [f"{greedy / p.median_run(label).seconds:.2f}x" for label in labels[1:]]
        lines.append(
            f"| {p.id} | {p.prompt.category} | {p.prompt_tokens} | {p.runs[labels[0]][0].new_tokens} "
            f"| {greedy:.2f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Definitions: see `hf_cascade/benchmark/report.py` and docs/benchmarks.md.", ""]
    return "\n".join(lines)


def not_run_text(reason: str) -> str:
    """How reports and stdout say that a method or prompt was left out of a benchmark (`BenchmarkResult.not_run`)."""
    return f"not run: {reason}"


def write_plot(result: BenchmarkResult, path: str | os.PathLike) -> None:
    """A grouped bar chart of the speedup over greedy per category and method (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the PNG plot needs matplotlib: pip install 'hf_cascade[bench]' (or pass --no-plot)") from e
    rows = [r for r in summarize(result) if r.method != result.methods[0].label]
    cats = list(dict.fromkeys(r.category for r in rows))
    labels = list(dict.fromkeys(r.method for r in rows))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cats) + 2), 4.0))
    for i, label in enumerate(labels):
        values = [next(r.speedup or 0 for r in rows if r.method == label and r.category == c) for c in cats]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(cats))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cats)), cats)
    ax.set_ylabel("speedup over greedy (tokens/s, geometric mean)")
    target = os.path.basename(str(result.settings.get("target", "")).rstrip("/"))
    ax.set_title(f"hf_cascade bench: {target} ({result.settings.get('device')}, {result.settings.get('dtype')})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(result: BenchmarkResult, out_dir: str | os.PathLike, command: str | None, plot: bool) -> list[str]:
    """Write `results.json`, `report.md` and (with `plot`) `speedup.png` into `out_dir`; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "report.md")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(to_json_dict(result), f, indent=1)
        f.write("\n")
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(to_markdown(result, command))
    if plot:
        paths.append(os.path.join(out_dir, "speedup.png"))
        write_plot(result, paths[-1])
    return paths
