"""Turn a `BenchmarkResult` into summaries (per method and category), `results.json`, Markdown and a PNG plot.

Definitions (all per prompt, then aggregated over the prompts of a category):

- tokens/s: new tokens / median wall time over repeats; a category's tokens/s is total tokens / total median time.
- speedup: a method's tokens/s over greedy's on the same prompt; categories report the geometric mean.
- SWI (standardized walltime improvement, the CS Drafting paper's metric): greedy's cost over the method's cost,
  where a cost is the sum over models of forward passes x a fixed cost per pass: the parameter count (`swi_params`)
  or the measured 1-token forward latency (`swi_latency`). It ignores that a k-token pass costs more than a 1-token
  pass and every cost outside forward passes: the measured speedup is the number that counts.
- outside-forward fraction: wall time outside any model's forward pass (drafting logic, Max-Gram, Python) / wall time.
- acceptance: for cascade levels, draft tokens the reviewer accepted / draft tokens proposed (bonus and correction
  tokens are not counted as accepted).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict
from typing import Any

from ..stats import format_fitted_cost
from .runner import BenchmarkResult, PromptResult

__all__ = ["SCHEMA", "categories", "summarize", "to_json_dict", "to_markdown", "write_plot", "write_reports"]

SCHEMA = "hf_cascade.bench/1"


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _level_names(result: BenchmarkResult, label: str) -> dict[str, str]:
    """Cascade stats name assistants by position; reports use the names the drafters were registered under."""
    method = next(m for m in result.methods if m.label == label)
    return {f"assistant_{i}": name for i, name in enumerate(method.drafters)}


def _fitted(cost: list[float] | None) -> str:
    return format_fitted_cost(*cost) if cost else "-"


def _cost(run: Any, costs: dict[str, float]) -> float:
    return sum(passes * costs[name] for name, passes in run.forward_passes.items())


def _summary_row(result: BenchmarkResult, label: str, category: str, prompts: list[PromptResult]) -> dict[str, Any]:
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
        if latency and all(v is not None for v in latency.values()) and _cost(run, latency):
            swi_latency.append(_cost(ref, latency) / _cost(run, latency))
        for name, passes in run.forward_passes.items():
            level = levels.setdefault(name, {"forward_passes": 0, "forward_s": 0.0})
            level["forward_passes"] += passes
            level["forward_s"] += run.forward_seconds[name]
        for stats in run.levels:
            name = "target" if stats["kind"] == "target" else names.get(stats["name"], stats["name"])
            if stats.get("draft_cost") is not None:  # MaxGramConfig.measure_cost: fitted to this model's timings
                fitted.setdefault(name, []).append((stats["draft_cost"], stats["token_cost"]))
            if stats["kind"] == "target":
                continue
            level = levels.setdefault(names.get(stats["name"], stats["name"]), {"forward_passes": 0, "forward_s": 0.0})
            level["drafted"] = level.get("drafted", 0) + stats["drafted"]
            level["accepted"] = level.get("accepted", 0) + stats["accepted"]
            if stats["kind"] == "max_gram":
                level["forward_s"] += stats["propose_time_s"]  # Max-Gram's cost is its proposal time
    for name, costs in fitted.items():
        level = levels.setdefault(name, {"forward_passes": 0, "forward_s": 0.0})
        level["fitted_cost"] = [statistics.median(c[0] for c in costs), statistics.median(c[1] for c in costs)]
    acceptance = {
        name: (level["accepted"] / level["drafted"] if level["drafted"] else None)
        for name, level in levels.items()
        if "drafted" in level
    }
    return {
        "method": label,
        "category": category,
        "prompts": len(prompts),
        "new_tokens": int(tokens),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else None,
        "speedup": _geomean(speedups),
        "target_forwards": target_forwards,
        "tokens_per_target_forward": tokens / target_forwards if target_forwards else None,
        "swi_params": _geomean(swi_params),
        "swi_latency": _geomean(swi_latency),
        "outside_forward_fraction": outside / seconds if seconds else None,
        "acceptance": acceptance,
        "levels": levels,
        "identical": identical,
    }


def categories(result: BenchmarkResult) -> list[str]:
    """Categories in order of first appearance."""
    return list(dict.fromkeys(p.prompt.category for p in result.prompts))


def summarize(result: BenchmarkResult) -> list[dict[str, Any]]:
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
                "id": p.prompt.id,
                "category": p.prompt.category,
                "prompt_tokens": p.prompt_tokens,
                "runs": {label: [asdict(r) for r in runs] for label, runs in p.runs.items()},
            }
            for p in result.prompts
        ],
        "summary": summarize(result),
        "mismatches": list(result.mismatches),
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _packing(settings: dict) -> str:
    return " (linear layers packed for oneDNN, all methods)" if settings.get("onednn_linear") else ""


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
        f"repeat(s) per prompt after a warm-up, medians; {len(result.prompts)} prompts; "
        f"benchmark wall time {_duration(result.wall_time_s)}",
        "",
    ]
    if result.mismatches:
        lines += ["## OUTPUT MISMATCHES", "", *[f"- {m}" for m in result.mismatches], ""]
    else:
        lines += ["Every run of every method produced exactly greedy's tokens.", ""]
    rows = summarize(result)
    lines += [
        "## Summary",
        "",
        "| category | method | prompts | tok/s | speedup (geomean) | target fwd | tok/target fwd | SWI params "
        "| SWI latency | outside fwd | identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['category']} | {r['method']} | {r['prompts']} | {_fmt(r['tokens_per_s'], '.2f')} "
            f"| {_fmt(r['speedup'], '.2f', 'x')} | {r['target_forwards']} | {_fmt(r['tokens_per_target_forward'], '.2f')} "
            f"| {_fmt(r['swi_params'], '.2f')} | {_fmt(r['swi_latency'], '.2f')} "
            f"| {_fmt(r['outside_forward_fraction'] and 100 * r['outside_forward_fraction'], '.1f', '%')} "
            f"| {'yes' if r['identical'] else '**NO**'} |"
        )
    lines += [
        "",
        "## Where the time goes (all prompts)",
        "",
        "Per model: forward passes and seconds inside them (Max-Gram: proposal time), draft tokens proposed and "
        "accepted by the reviewer (cascade methods); fitted cost: the `draft_cost + token_cost * k` fitted to the "
        "model's own timed forward passes (`MaxGramConfig.measure_cost`; median over runs), which sets the length of "
        "the Max-Gram drafts it reviews.",
        "",
        "| method | model | forward passes | seconds | drafted | accepted | acceptance | fitted cost |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["category"] != "all":
            continue
        for name, level in r["levels"].items():
            lines.append(
                f"| {r['method']} | {name} | {level['forward_passes']} | {level['forward_s']:.2f} "
                f"| {level.get('drafted', '-')} | {level.get('accepted', '-')} "
                f"| {_fmt(r['acceptance'].get(name), '.2f')} | {_fitted(level.get('fitted_cost'))} |"
            )
    if result.costs:
        ks = sorted({k for c in result.costs.values() for k in c.forward_s})
        lines += [
            "",
            "## Cost of a forward pass",
            "",
            "Median seconds of a k-token forward with a warm KV cache (first prompt as context); "
            "relative to the 1-token pass in brackets.",
            "",
            "| model | parameters | " + " | ".join(f"{k} token{'s' if k > 1 else ''}" for k in ks) + " |",
            "|---|---:|" + "---:|" * len(ks),
        ]
        for name, c in result.costs.items():
            one = c.forward_s.get(1)
            cells = [
                f"{c.forward_s[k] * 1000:.1f} ms ({c.forward_s[k] / one:.2f}x)" if one else f"{c.forward_s[k]:.4f}"
                for k in ks
            ]
            size = f"{c.parameters / 1e6:.1f}M" if c.parameters >= 1e5 else str(c.parameters)
            lines.append(f"| {name} | {size} | " + " | ".join(cells) + " |")
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
            f"| {p.prompt.id} | {p.prompt.category} | {p.prompt_tokens} | {p.runs[labels[0]][0].new_tokens} "
            f"| {greedy:.2f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Definitions: see `hf_cascade/benchmark/report.py` and docs/benchmarks.md.", ""]
    return "\n".join(lines)


def write_plot(result: BenchmarkResult, path: str | os.PathLike) -> None:
    """A grouped bar chart of the speedup over greedy per category and method (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the PNG plot needs matplotlib: pip install 'hf_cascade[bench]' (or pass --no-plot)") from e
    rows = [r for r in summarize(result) if r["method"] != result.methods[0].label]
    cats = list(dict.fromkeys(r["category"] for r in rows))
    labels = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cats) + 2), 4.0))
    for i, label in enumerate(labels):
        values = [next(r["speedup"] or 0 for r in rows if r["method"] == label and r["category"] == c) for c in cats]
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
