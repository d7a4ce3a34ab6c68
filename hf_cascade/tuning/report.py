"""`tune_report.md`, `tune_result.json` and the placement notes of a `TuneResult`: what was measured, what was
chosen, why, and how far it is from the bound.

Tables shared with `hf-cascade bench` (forward costs, the timed summary) come from `hf_cascade.benchmark.report`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from ..benchmark.machine import describe_machine
from ..benchmark.report import cost_table, fmt, summarize, summary_table, write_reports
from .bound import verdict
from .measure import cost_ratio

if TYPE_CHECKING:
    from . import TuneResult

__all__ = ["REPORT_NAME", "RESULT_NAME", "bound_section", "describe_chosen", "placement_notes", "save", "to_dict",
           "to_markdown"]  # fmt: skip

REPORT_NAME = "tune_report.md"
RESULT_NAME = "tune_result.json"
_SAMPLED = (
    "The runs sampled (`do_sample=True`): `greedy` is plain sampling, speedups are against it, and outputs are not "
    "compared (no `confirm/` bench report: its tables are for greedy runs)."
)


def _column_name(result: TuneResult, column: int) -> str:
    return result.drafters[column] if column < len(result.drafters) else "max_gram"


def _reviewer_name(result: TuneResult, level: int) -> str:
    return "target" if level == 0 else result.drafters[level - 1]


def _where(model: torch.nn.Module) -> str:
    placement = getattr(model, "hf_device_map", None)
    if placement and len(set(map(str, placement.values()))) > 1:
        counts: dict[str, int] = {}
        for device in placement.values():
            counts[str(device)] = counts.get(str(device), 0) + 1
        return "device_map: " + ", ".join(f"{n} module(s) on {d}" for d, n in counts.items())
    return str(next(model.parameters()).device)


def _curve(name: str, cost: Any) -> str:
    one = cost.forward_s.get(1)
    ratios = ", ".join(f"{k} tokens {cost_ratio(cost, k):.2f}x" for k in (2, 8, 16) if cost_ratio(cost, k))
    return f"`{name}`: a 1-token forward takes {one * 1000:.1f} ms; {ratios} of that"


def placement_notes(result: TuneResult, target: torch.nn.Module, *, packed: bool, used: set[int]) -> list[str]:
    """What the measured numbers say about the placement and the kernels, as sentences with the numbers.

    Args:
        result (`TuneResult`): the measurements (costs, oneDNN probe, acceptance, timings, candidates).
        target (`torch.nn.Module`): the target (its device or `hf_device_map`).
        packed (`bool`): whether the target's linear layers are packed for oneDNN already.
        used (`set[int]`): the drafter columns the chosen k-matrix runs.
    """
    kernels = "oneDNN-packed linear layers" if packed else "default kernels"
    target_cost = result.costs["target"]
    notes = [f"{_curve('target', target_cost)} ({_where(target)}, {kernels})."]
    two, eight = cost_ratio(target_cost, 2), cost_ratio(target_cost, 8)
    if two is not None and two >= 1.5:
        notes.append(
            f"A 2-token forward of the target costs {two:.2f}x a 1-token one with these kernels: every draft token "
            "reviewed must be accepted often to pay, so drafts stay short."
        )
    elif eight is not None and eight <= 1.3:
        notes.append(
            f"Verification is nearly flat here (8 tokens cost {eight:.2f}x one): long drafts cost little, so the "
            "k-matrix drafts long."
        )
    cheapest = min(target_cost.forward_s, key=target_cost.forward_s.__getitem__)
    if cheapest > 1 and target_cost.forward_s[cheapest] < 0.95 * target_cost.forward_s[1]:
        notes.append(
            f"A {cheapest}-token forward of the target costs {cost_ratio(target_cost, cheapest):.2f}x a 1-token one "
            "here (the kernels choose their algorithm by size): a draft that fills it costs less than no draft."
        )
    probe = result.onednn_costs.get("target")
    if packed:
        notes.append("The linear layers are packed for oneDNN (`--onednn-linear` / `use_onednn_linear`): all costs "
                     "above are with packed kernels.")  # fmt: skip
    elif probe is not None:
        p2, p1, one = cost_ratio(probe, 2), probe.forward_s[1], target_cost.forward_s[1]
        helps = (p2 or 0) < (two or 0) - 0.05 or p1 < 0.95 * one
        notes.append(
            f"`use_onednn_linear`, measured on a copy of the target: a 2-token forward costs {p2:.2f}x a 1-token one "
            f"(here {two:.2f}x), a 1-token forward {p1 * 1000:.1f} ms (here {one * 1000:.1f} ms). "
            + ("Pack the models (`--onednn-linear`, `hf_cascade.use_onednn_linear(model)`) and tune again."
               if helps else "It would not help much here.")
        )  # fmt: skip
    for column, name in enumerate(result.drafters):
        cost = result.costs[name]
        relative = cost.forward_s[1] / target_cost.forward_s[1]
        packed = " (packed for oneDNN, as the cascade runs it)" if result.drafter_packing.get(name) == "packed" else ""
        line = f"{_curve(name, cost)}{packed}; its 1-token forward costs {relative:.2f}x the target's."
        if column not in used:
            counts = result.acceptance.get(result.config.lenience) or next(iter(result.acceptance.values()))
            a = counts.get((0, column))
            line += (
                f" The chosen k-matrix gives it no tokens: its drafts (accepted by the target at a = "
                f"{fmt(a.rate if a else None, '.2f')}) do not pay for its forwards on this machine."
            )
        notes.append(line)
    overhead = result.timings.overhead_s
    if overhead:
        notes.append(
            f"Outside the models (drafting logic, reviews, Python): {overhead * 1000:.2f} ms per forward pass, "
            f"{overhead / target_cost.forward_s[1]:.0%} of a 1-token target forward."
        )
    refused = [c for c in result.candidates if c.identical is False]
    notes += [
        f"REFUSED {c.label} (k_matrix {c.k_matrix}, lenience {c.lenience:g}): its greedy output differed from plain "
        "greedy's. That is a bug of hf_cascade; please report it."
        for c in refused
    ]
    return notes


def describe_chosen(candidate: Any) -> str:
    """`tuned-1: k_matrix [[4, 2], [0, 16]], lenience 1`; the default candidate says it is the base config."""
    from . import DEFAULT_LABEL

    base = " (the base config as it is)" if candidate.label == DEFAULT_LABEL else ""
    return f"{candidate.label}{base}: k_matrix {candidate.k_matrix}, lenience {candidate.lenience:g}"


def _bench_command(result: TuneResult) -> str:
    """`hf-cascade bench` over the tuned models with `--tuned` (paths as `tune` was given them)."""
    import shlex

    s = result.settings
    target = f"--target {shlex.quote(s['target'])} " if s.get("target") else ""
    drafters = s.get("drafters") or {name: "PATH" for name in result.drafters}
    flags = "".join(f"--drafter {shlex.quote(f'{name}={path}')} " for name, path in drafters.items())
    packed = "--onednn-linear " if s.get("onednn_linear") else ""
    return f"hf-cascade bench {target}{flags}{packed}--tuned DIR/cascade_config.json"


def _acceptance_table(result: TuneResult) -> list[str]:
    lines = [
        "| lenience | reviewer | drafter | reviews | drafted | accepted | accepted / drafted | a (per token) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for lenience, counts in result.acceptance.items():
        for (level, column), c in sorted(counts.items()):
            ratio = c.accepted / c.drafted if c.drafted else None
            lines.append(
                f"| {lenience:g} | {_reviewer_name(result, level)} | {_column_name(result, column)} | {c.reviews} "
                f"| {c.drafted} | {c.accepted} | {fmt(ratio, '.2f')} | {fmt(c.rate, '.3f')} |"
            )
    return lines


def _candidate_table(result: TuneResult) -> list[str]:
    lines = [
        "| configuration | k_matrix | lenience | predicted speedup | predicted tok/target fwd | confirmed speedup "
        "| identical | chosen |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for c in result.candidates:
        identical = {True: "yes", False: "**NO**", None: "-"}[c.identical]
        lines.append(
            f"| {c.label} | `{c.k_matrix}` | {c.lenience:g} | {fmt(c.predicted_speedup, '.2f', 'x')} "
            f"| {fmt(c.predicted_tokens_per_target_forward, '.2f')} | {fmt(c.confirmed_speedup, '.2f', 'x')} "
            f"| {identical} | {'**yes**' if c.label == result.chosen else ''} |"
        )
    return lines


def _share(value: float | None, of: float) -> str:
    return f"{value / of:.0%}" if value is not None and of > 0 else "-"


def bound_section(result: TuneResult) -> list[str]:
    """The "Bound" section: the fixed-policy and per-step oracle bounds, the chosen and default configurations'
    speedups next to them, and the verdict line (empty without a bound)."""
    from . import DEFAULT_LABEL

    bound = result.bound
    if bound is None:
        return []
    chosen = next(c for c in result.candidates if c.label == result.chosen)
    max_gram = f", Max-Gram 0..{bound.max_gram_max}" if bound.max_gram_max is not None else ""
    lines = [
        "## Bound",
        "",
        "The best speedup over greedy a draft-length policy could reach with the costs and acceptance measured above, "
        "by the same expected-walltime model as the predictions (`hf_cascade.tuning.bound`). A tuner that reaches "
        "the fixed k-matrix bound has nothing left to find on this machine; the oracle is an optimistic ceiling for "
        "draft lengths chosen per step (the controller's), knowing the future.",
        "",
        "| bound | speedup over greedy | reached by |",
        "|---|---:|---|",
        f"| any fixed k-matrix (neural entries 0..{bound.max_neural}{max_gram}) | {bound.fixed_speedup:.2f}x "
        f"| `{bound.fixed_k_matrix}`, lenience {bound.fixed_lenience:g} |",
        f"| per-step oracle (each step drafts only tokens that will be accepted) | {bound.oracle_speedup:.2f}x "
        f"| {bound.oracle_source if bound.oracle_source == 'fixed' else f'drafts from `{bound.oracle_source}`'} |",
        "",
        "| configuration | predicted | confirmed | confirmed / fixed bound | confirmed / oracle bound |",
        "|---|---:|---:|---:|---:|",
    ]
    shown = [c for c in result.candidates if c.label in (result.chosen, DEFAULT_LABEL)]
    for c in shown:
        label = f"{c.label} (chosen)" if c.label == result.chosen else c.label
        lines.append(
            f"| {label} | {fmt(c.predicted_speedup, '.2f', 'x')} | {fmt(c.confirmed_speedup, '.2f', 'x')} "
            f"| {_share(c.confirmed_speedup, bound.fixed_speedup)} | {_share(c.confirmed_speedup, bound.oracle_speedup)} |"
        )
    lines += ["", f"Verdict: {verdict(chosen.confirmed_speedup, bound, chosen.predicted_speedup)}.", ""]
    return lines


def to_dict(result: TuneResult) -> dict[str, Any]:
    """What `tune_result.json` holds: the chosen config and label, every candidate, the bound and the verdict."""
    chosen = next(c for c in result.candidates if c.label == result.chosen)
    bound = result.bound
    return {
        "chosen": result.chosen,
        "config": result.config.to_dict(),
        "drafters": result.drafters,
        "greedy_step_s": result.greedy_step_s,
        "sampled": result.sampled,
        "candidates": [asdict(c) for c in result.candidates],
        "bound": None if bound is None else bound.to_dict(),
        "achieved_speedup": chosen.confirmed_speedup,
        "achieved_of_bound": None
        if bound is None or chosen.confirmed_speedup is None
        else chosen.confirmed_speedup / bound.fixed_speedup,
        "verdict": None if bound is None else verdict(chosen.confirmed_speedup, bound, chosen.predicted_speedup),
    }


def to_markdown(result: TuneResult, command: str | None = None) -> str:
    """The report: settings, the chosen configuration, placement notes, costs, acceptance, candidates, timed runs."""
    s = result.settings
    chosen = next(c for c in result.candidates if c.label == result.chosen)
    lines = ["# hf_cascade tune", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    if result.confirmation is not None and result.confirmation.machine:
        lines.append(f"- machine: {describe_machine(result.confirmation.machine)}")
    drafters = s.get("drafters") or {name: name for name in result.drafters}
    lines += [
        f"- target: `{s.get('target', 'target')}`; drafters: "
        + (", ".join(f"`{k}` = `{v}`" for k, v in drafters.items()) or "none")
        + ("; Max-Gram" if result.config.use_max_gram else ""),
        f"- plain greedy as the model sees it: {result.greedy_step_s * 1000:.1f} ms per token (the target's 1-token "
        "forward and the time per forward outside the models); measured: the confirmation runs below",
        "",
        "## Chosen configuration",
        "",
        f"{describe_chosen(chosen)}: "
        f"{fmt(chosen.confirmed_speedup, '.2f', 'x greedy measured', 'not timed (confirm=0)')}, "
        f"{fmt(chosen.predicted_speedup, '.2f', 'x')} predicted. Written to `cascade_config.json`: load it with "
        "`CascadeConfig.from_pretrained(DIR)`, or compare it in a benchmark with the same drafters, in the same order:",
        "",
        "```bash",
        _bench_command(result),
        "```",
        "",
        *bound_section(result),
        "## Placement",
        "",
        *[f"- {note}" for note in result.notes],
        "",
        "## Cost of a forward pass",
        "",
        *cost_table({**result.costs, **{f"{k} (oneDNN copy)": v for k, v in result.onednn_costs.items()}}),
        "",
        "## Acceptance",
        "",
        "Read from `CascadeStats` of chain runs (one drafter per level, long drafts, full-length Max-Gram proposals): "
        "`a` is the per-token acceptance of the i.i.d. model whose expected accepted tokens per review match the "
        "run's (`hf_cascade.tuning.ewif.geometric_acceptance`).",
        "",
        *_acceptance_table(result),
        "",
        "## Candidates",
        "",
        "Predicted: the expected-walltime model (`hf_cascade.tuning.ewif`) with the costs and acceptance above. "
        "Confirmed: interleaved timed runs against plain greedy (geometric mean of the per-prompt speedups).",
        "",
        *_candidate_table(result),
        "",
    ]
    if result.confirmation is not None:
        lines += ["## Confirmation runs", "", *summary_table(summarize(result.confirmation)), ""]
        lines += [_SAMPLED if result.sampled else "Full tables: `confirm/report.md`.", ""]
    return "\n".join(lines)


def save(result: TuneResult, out_dir: str | os.PathLike, command: str | None = None) -> list[str]:
    """Write `cascade_config.json`, `tune_report.md`, `tune_result.json` (`to_dict`) and the confirmation's
    `confirm/results.json` and `confirm/report.md` into `out_dir` (created if missing); returns the paths."""
    paths = [result.config.save_pretrained(out_dir)]
    paths.append(os.path.join(out_dir, REPORT_NAME))
    with open(paths[-1], "w", encoding="utf-8") as f:
        f.write(to_markdown(result, command))
    paths.append(os.path.join(out_dir, RESULT_NAME))
    with open(paths[-1], "w", encoding="utf-8") as f:
        json.dump({**to_dict(result), "command": command}, f, indent=2)
    if result.confirmation is not None and not result.sampled:
        paths += write_reports(result.confirmation, os.path.join(out_dir, "confirm"), command, plot=False)
    return paths
