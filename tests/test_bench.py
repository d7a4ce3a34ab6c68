"""`hf_cascade.benchmark` and `hf-cascade bench`: method specs, prompt sets, dataset readers, the interleaved runner,
the exactness check, SWI arithmetic and the reports, on tiny random models (nothing downloaded)."""

from __future__ import annotations

import functools
import gzip
import json
import re
from dataclasses import asdict

import pytest
import torch
from test_cli import WORDS, run_cli, save_tiny

from hf_cascade import CascadeConfig, CascadeValueError, MaxGramMemory, cpu
from hf_cascade.benchmark import (
    BUILTIN_SETS,
    REPEATING_SETS,
    BenchmarkResult,
    ChatTurns,
    Method,
    Mismatch,
    ModelCost,
    Prompt,
    PromptResult,
    Run,
    load_builtin,
    load_dataset_file,
    load_jsonl,
    parse_method,
    run_benchmark,
    sample,
    summarize,
    to_json_dict,
    to_markdown,
)
from hf_cascade.benchmark.methods import MethodState
from hf_cascade.benchmark.report import SCHEMA, SummaryRow
from hf_cascade.benchmark.suffix import suffix_available

PROMPTS = [
    ("p0", "copy", "w1 w2 w3 w4 w5 w9 w1 w2 w3 w4 w5 w7 w1 w2 w3"),
    ("p1", "copy", "w7 w8 w9 w7 w8 w9 w7 w8"),
    ("p2", "other", "w3 w10 w4 w22 w6"),
]


# ------------------------------------------------------------------------------------------------ method specs
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("greedy", Method("greedy", "greedy")),
        ("prompt-lookup", Method("prompt-lookup", "prompt-lookup")),
        ("prompt-lookup:4", Method("prompt-lookup:4", "prompt-lookup", lookup_tokens=4)),
        ("assisted:small", Method("assisted:small", "assisted", ("small",))),
        ("cascade", Method("cascade", "cascade")),
        ("cascade:big,small", Method("cascade:big,small", "cascade", ("big", "small"))),
        ("two = cascade:big, small", Method("two", "cascade", ("big", "small"))),
        ("cascade+memory", Method("cascade+memory", "cascade", memory=True)),
        ("cascade+memory:big", Method("cascade+memory:big", "cascade", ("big",), memory=True)),
        ("suffix", Method("suffix", "suffix", memory=True)),
        ("suffix:local", Method("suffix:local", "suffix")),
    ],
)
def test_parse_method(spec, expected):
    assert parse_method(spec) == expected


def test_parse_method_reads_a_config(tmp_path):
    config = CascadeConfig(k_matrix=[[3, 1], [0, 5]], lenience=2.0)
    config.save_pretrained(tmp_path)
    method = parse_method(f"mine=cascade:d@{tmp_path}")
    assert method.label == "mine" and method.drafters == ("d",) and method.cascade_config == config


@pytest.mark.parametrize(
    "spec, match",
    [
        ("beam", r"unknown kind 'beam'; use one of greedy, prompt-lookup, assisted, cascade, suffix"),
        ("assisted+memory:d", r"only cascade\+memory takes a '\+' modifier"),
        ("suffix:big", r"suffix takes no argument or ':local', got 'big'"),
        ("assisted", r"assisted generation takes exactly one drafter, got \[\]; write assisted:NAME"),
        ("assisted:a,b", r"exactly one drafter, got \['a', 'b'\]"),
        ("greedy:a", r"greedy takes no drafter models"),
        ("prompt-lookup:0", r"prompt-lookup:N needs a positive integer N, got '0'"),
        ("cascade:a,,b", r"empty drafter name"),
        ("=cascade", r"empty label before '='"),
        ("cascade@/does/not/exist", r"cannot read the cascade config '/does/not/exist'"),
    ],
)
def test_parse_method_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_method(spec)


def test_method_checks_the_k_matrix_against_its_drafters():
    with pytest.raises(ValueError, match="k_matrix"):
        Method("bad", "cascade", ("a", "b"), CascadeConfig(k_matrix=[[4]]))
    with pytest.raises(ValueError, match="needs use_max_gram=True"):
        Method("bad", "cascade", (), CascadeConfig(use_max_gram=False))


# ------------------------------------------------------------------------------------------------ prompt sets
@pytest.mark.parametrize("name", BUILTIN_SETS)
def test_builtin_sets(name):
    prompts = load_builtin(name)
    assert len(prompts) >= 15
    assert {p.category for p in prompts} == {name}
    assert len({p.id for p in prompts}) == len(prompts)
    if name == "math":
        assert all(p.reference and p.reference.isdigit() for p in prompts)


@pytest.mark.parametrize("name", REPEATING_SETS)
def test_repeating_sets(name):
    prompts = load_builtin(name)
    assert len(prompts) >= 8 and {p.category for p in prompts} == {name}
    if name == "chat-followup":  # two-turn conversations: the second turn asks about the first answer
        assert len(prompts) <= 12 and all(len(p.turns) == 2 and p.followups for p in prompts)
    else:
        assert all(p.turns == (p.text,) for p in prompts)


def test_load_jsonl_reads_conversations(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "category": "c", "prompt": ["first", "about your answer"]}) + "\n")
    [prompt] = load_jsonl(path)
    assert prompt.text == "first" and prompt.followups == ("about your answer",)
    assert prompt.turns == ("first", "about your answer")


def test_builtin_unknown():
    with pytest.raises(ValueError, match="unknown built-in prompt set 'poems'; choose from grounded, math, chat"):
        load_builtin("poems")


def test_sample_is_seeded_and_keeps_order():
    prompts = load_builtin("chat")
    a, b = sample(prompts, 5, seed=3), sample(prompts, 5, seed=3)
    assert a == b and len(a) == 5
    assert [prompts.index(p) for p in a] == sorted(prompts.index(p) for p in a)
    assert sample(prompts, 5, seed=4) != a
    assert sample(prompts, 100) == prompts and sample(prompts, None) == prompts


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"id": "a", "category": "c"}'], r"line 1: missing key\(s\) \['prompt'\]"),
        (["not json"], r"line 1: not valid JSON"),
        (['{"id": "a", "category": "c", "prompt": ""}'], r"'prompt' must be a non-empty string"),
        (['{"id": "a", "category": "c", "prompt": ["x", ""]}'], r"or a non-empty list of them .* got \['x', ''\]"),
        (['{"id": "a", "category": "c", "prompt": []}'], r"or a non-empty list of them \(the user turns"),
        (['{"id": "a", "category": "c", "prompt": "x"}'] * 2, r"duplicate prompt id 'a'"),
        (["[1, 2]"], r"expected a JSON object, got list"),
    ],
)
def test_load_jsonl_errors(tmp_path, lines, match):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        load_jsonl(path)


def test_dataset_readers(tmp_path):
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    (p,) = load_dataset_file("gsm8k", gsm)
    assert p.text == "Reason the math question below step by step. Question: What is 2 + 3? Answer:"
    assert p.reference == "5" and p.category == "gsm8k"

    mt = tmp_path / "question.jsonl"
    mt.write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]}) + "\n")
    (p,) = load_dataset_file("mt-bench", mt)
    assert (p.id, p.category, p.text) == ("mt-bench-81", "writing", "Write a poem.")

    he = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(he, "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def f(x):\n"}) + "\n")
    (p,) = load_dataset_file("humaneval", he)
    assert p.id == "humaneval-0" and p.text.endswith("def f(x):\n")

    csv_dir = tmp_path / "mmlu"
    csv_dir.mkdir()
    (csv_dir / "astronomy_test.csv").write_text('"Which is a planet?",Moon,Mars,Sun,Vega,B\n')
    (p,) = load_dataset_file("mmlu", csv_dir)
    assert p.category == "astronomy" and p.reference == "B"
    assert (
        p.text
        == "Question: Which is a planet?\n(A) Moon\n(B) Mars\n(C) Sun\n(D) Vega\nAnswer: Let's think step by step."
    )
    mmlu_jsonl = tmp_path / "mmlu.jsonl"
    mmlu_jsonl.write_text(json.dumps({"question": "Q?", "choices": ["a", "b"], "answer": 1, "subject": "x"}) + "\n")
    (p,) = load_dataset_file("mmlu", mmlu_jsonl)
    assert p.reference == "B" and "(B) b" in p.text


def test_dataset_reader_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'squad'; choose from gsm8k, mt-bench, humaneval, mmlu"):
        load_dataset_file("squad", tmp_path)
    with pytest.raises(FileNotFoundError, match="gsm8k data file .*nope.jsonl does not exist"):
        load_dataset_file("gsm8k", tmp_path / "nope.jsonl")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"turns": ["hi"], "category": "writing"}) + "\n")
    with pytest.raises(ValueError, match=r"record 1: not GSM8K \(no 'question' key\)"):
        load_dataset_file("gsm8k", wrong)
    bad_csv = tmp_path / "x_test.csv"
    bad_csv.write_text("a,b,c\n")
    with pytest.raises(ValueError, match="an MMLU CSV row has 6 fields, got 3"):
        load_dataset_file("mmlu", bad_csv)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no humaneval records found"):
        load_dataset_file("humaneval", empty)


# ------------------------------------------------------------------------------------------------ runner, tiny models
@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dir = str(save_tiny(tmp_path_factory.mktemp("bench_target")))
    drafter_dir = str(save_tiny(tmp_path_factory.mktemp("bench_drafter"), noise=0.3))
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    drafter = AutoModelForCausalLM.from_pretrained(drafter_dir, dtype=torch.float32).eval()
    return target, drafter, AutoTokenizer.from_pretrained(target_dir), target_dir, drafter_dir


METHODS = [
    Method("greedy", "greedy"),
    Method("lookup", "prompt-lookup", lookup_tokens=4),
    Method("assisted", "assisted", ("d",)),
    Method("cascade", "cascade"),
    # Fixed lengths: the draft-length controller would skip a drafter as large as the target, leaving nothing to count.
    Method("cascade:d", "cascade", ("d",), cascade_config=CascadeConfig(adaptive_drafters=False)),
]


def _encoded(tokenizer):
    return [
        (Prompt(i, c, t), {k: v for k, v in tokenizer(t, return_tensors="pt").items() if k != "token_type_ids"})
        for i, c, t in PROMPTS
    ]


def test_run_benchmark_interleaves_and_checks(tiny_pair):
    target, drafter, tokenizer, *_ = tiny_pair
    order = []
    result = run_benchmark(
        target,
        _encoded(tokenizer),
        METHODS,
        {"d": drafter},
        dict(max_new_tokens=10, do_sample=False, pad_token_id=0),
        repeats=2,
        warmup_tokens=4,
        progress=order.append,
        status=order.append,
    )
    # Status lines for the untimed phases (cost of each model, warm-up of each method), then 0 when the timed runs
    # start (a progress bar begins there, so its ETA ignores the untimed minutes), then 1 per timed run.
    phases = [line.split(":")[0] for line in order if isinstance(line, str)]
    # The cascade methods run the float32 drafter packed for oneDNN (`pack_drafters`): it is timed that way too.
    packed = ["measuring forward-pass cost"] if cpu.onednn_linear_available() else []
    assert phases == ["measuring forward-pass cost 1/2", "measuring forward-pass cost 2/2", *packed] + [
        f"warm-up {i}/5" for i in range(1, 6)
    ]
    counts = [n for n in order if not isinstance(n, str)]
    assert order.index(0) == len(phases) and counts == [0] + [1] * (3 * 5 * 2)
    assert result.mismatches == []
    for p in result.prompts:
        assert all(len(runs) == 2 for runs in p.runs.values())
        greedy = p.runs["greedy"][0]
        assert greedy.forward_passes == {"target": greedy.new_tokens}  # one forward per token, counted by hooks
        assert p.runs["assisted"][0].forward_passes["d"] > 0
        cascade = p.runs["cascade:d"][0]
        assert [lvl["name"] for lvl in cascade.levels] == ["target", "assistant_0", "max_gram"]
        assert cascade.forward_passes["target"] == cascade.levels[0]["forward_passes"]
        assert cascade.forward_passes["d"] == cascade.levels[1]["forward_passes"]
    assert set(result.costs) == {"target", "d", *(["d (packed)"] if packed else [])}
    assert all(set(c.forward_s) == {1, 2, 4, 8} and c.parameters > 0 for c in result.costs.values())
    rows = summarize(result)
    assert [(r.category, r.method) for r in rows][:5] == [("copy", m.label) for m in METHODS]
    assert {r.category for r in rows} == {"copy", "other", "all"}
    by = {(r.category, r.method): r for r in rows}
    assert by[("all", "greedy")].speedup == pytest.approx(1.0)
    assert by[("all", "cascade:d")].acceptance.keys() == {"d", "max_gram"}
    # MaxGramConfig.measure_cost: Max-Gram's reviewers were timed (the Max-Gram-only cascade's target, and drafter d
    # in cascade:d); greedy was not timed. In cascade:d the target always reviews d's draft and never runs a one-token
    # pass, yet its costs are fitted: its timings outlive each call (`cost.FORWARD_SECONDS_ATTR`), and the
    # Max-Gram-only cascade on the same target (warmed up first) timed one-token passes.
    cascade_levels = by[("all", "cascade:d")].levels
    assert len(cascade_levels["d"]["fitted_cost"]) == 2 and len(cascade_levels["target"]["fitted_cost"]) == 2
    assert len(by[("all", "cascade")].levels["target"]["fitted_cost"]) == 2
    assert (
        "fitted_cost" not in cascade_levels["max_gram"] and "fitted_cost" not in by[("all", "greedy")].levels["target"]
    )
    assert all(r.identical for r in rows)
    assert 0 <= by[("all", "cascade")].outside_forward_fraction < 1


def _corrupt_cascade(monkeypatch, row: int, column: int) -> None:
    """Make hf_cascade's generate change one token of its output, which the benchmark's exactness check must catch."""
    import hf_cascade.generation as generation

    original = generation.generate

    @functools.wraps(original)  # generate() reads the callable's signature to route its extra kwargs
    def corrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        out.sequences[row, column] = (out.sequences[row, column] + 1) % len(WORDS)
        return out

    monkeypatch.setattr(generation, "generate", corrupted)


def test_run_benchmark_reports_a_mismatch(tiny_pair, monkeypatch):
    target, drafter, tokenizer, *_ = tiny_pair
    _corrupt_cascade(monkeypatch, 0, -2)
    result = run_benchmark(
        target,
        _encoded(tokenizer)[:1],
        METHODS[:1] + METHODS[3:4],
        {},
        dict(max_new_tokens=8, do_sample=False, pad_token_id=0),
        repeats=1,
        measure_costs=False,
    )
    assert result.mismatches == [Mismatch("p0", "cascade", "cascade", 6, 1)] and result.mismatches[0].is_cascade
    assert str(result.mismatches[0]) == "prompt p0: cascade (repeat 1) differs from greedy from new token 6"
    assert to_json_dict(result)["mismatches"] == [str(result.mismatches[0])]  # results.json keeps its strings
    assert [r.identical for r in summarize(result)] == [True, False]
    assert "## OUTPUT MISMATCHES" in to_markdown(result)


def test_cli_bench_progress_bar_starts_with_the_timed_runs(tiny_pair, prompt_file, tmp_path, capsys, monkeypatch):
    """The bar is created after the cost measurement and warm-up, so its elapsed time and ETA cover timed runs only."""
    import tqdm.auto

    created = []
    real = tqdm.auto.tqdm

    def recording_tqdm(*args, **kwargs):
        if kwargs.get("unit") == "run":  # the benchmark's bar (transformers' weight loading has its own)
            created.append(capsys.readouterr().err)  # what was printed before the bar
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", recording_tqdm)
    *_, target_dir, _ = tiny_pair
    argv = ["bench", "--target", target_dir, "--prompts", prompt_file, "--method", "cascade", "--no-plot"]
    status, _, err = run_cli([*argv, "--max-new-tokens", "4", "--repeats", "1", "--out", str(tmp_path)], capsys)
    assert status == 0 and len(created) == 1
    assert "measuring forward-pass cost 1/1: target" in created[0] and "warm-up 2/2: cascade" in created[0]
    assert "warm-up" not in err and "measuring" not in err  # all of them were printed before the bar started


@pytest.mark.parametrize(
    "methods, drafters, match",
    [
        ([Method("cascade", "cascade")], {}, "the first method must be greedy"),
        ([Method("greedy", "greedy"), Method("greedy", "cascade")], {}, "method labels must be unique"),
        ([Method("greedy", "greedy"), Method("a", "assisted", ("x",))], {}, r"drafter\(s\) \['x'\] that are not"),
    ],
)
def test_run_benchmark_errors(tiny_pair, methods, drafters, match):
    target, _, tokenizer, *_ = tiny_pair
    with pytest.raises(ValueError, match=match):
        run_benchmark(target, _encoded(tokenizer), methods, drafters, {})


@pytest.mark.parametrize(
    "batch_size, kwargs, match",
    [
        (0, {"pad_token_id": 0}, r"batch_size must be an integer >= 1, got 0; 1 runs one prompt per call"),
        (2, {}, r"batch_size=2 needs generation_kwargs\['pad_token_id'\] to left-pad the prompts with"),
    ],
)
def test_run_benchmark_batch_size_errors(tiny_pair, batch_size, kwargs, match):
    target, _, tokenizer, *_ = tiny_pair
    with pytest.raises(CascadeValueError, match=match):
        run_benchmark(target, _encoded(tokenizer), METHODS[:1], {}, kwargs, batch_size=batch_size)


def test_run_benchmark_in_batches(tiny_pair):
    """Batch size 3 over 4 prompts of one category: a batch of 3, then the last batch of 1; every row checked."""
    target, drafter, tokenizer, *_ = tiny_pair
    encoded = [(Prompt(p.id, "copy", p.text), inputs) for p, inputs in _encoded(tokenizer)]
    encoded.append(
        (
            Prompt("p3", "copy", "w5 w6 w5 w6 w5 w6 w5 w6 w5 w6 w5"),
            tokenizer("w5 w6 w5 w6 w5 w6 w5 w6 w5 w6 w5", return_tensors="pt"),
        )
    )
    encoded[-1] = (encoded[-1][0], {k: v for k, v in encoded[-1][1].items() if k != "token_type_ids"})
    methods = [*METHODS, Method("cascade+memory", "cascade", memory=True)]
    generation_kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    result = run_benchmark(
        target,
        encoded,
        methods,
        {"d": drafter},
        generation_kwargs,
        repeats=1,
        warmup_tokens=2,
        measure_costs=False,
        batch_size=3,
    )
    assert result.not_run == {
        "lookup": "cannot batch (transformers' prompt lookup refuses batches of more than one prompt)",
        "assisted": "cannot batch (transformers' assisted generation refuses batches of more than one prompt)",
    }
    assert [m.label for m in result.methods] == ["greedy", "cascade", "cascade:d", "cascade+memory"]
    assert result.mismatches == []
    assert [p.id for p in result.prompts] == ["p0+p1+p2", "p3"]
    first = result.prompts[0]
    widest = max(inputs["input_ids"].shape[1] for _, inputs in encoded[:3])
    assert first.prompt_tokens == widest and first.prompt_count == 3
    # Each greedy row is plain greedy on that prompt alone (fp32 tiny model: padding changes no argmax here).
    for (prompt, inputs), row in zip(encoded[:3], first.runs["greedy"][0].rows, strict=True):
        alone = target.generate(**inputs, **generation_kwargs)[0, inputs["input_ids"].shape[1] :].tolist()
        assert row == alone, prompt.id
    for label in ("greedy", "cascade", "cascade:d", "cascade+memory"):
        run = first.runs[label][0]
        assert len(run.rows) == 3 and run.new_tokens == sum(map(len, run.rows)) == len(run.ids)
    assert first.runs["cascade:d"][0].forward_passes["d"] > 0  # one batched drafter forward serves every row
    assert result.prompts[1].runs["cascade"][0].rows == []  # a batch of one prompt is a plain run
    rows = summarize(result)
    assert [(r.method, r.prompts) for r in rows] == [(m.label, 4) for m in result.methods]
    data = to_json_dict(result)
    assert data["not_run"] == result.not_run and data["prompts"][0]["batch"] == ["p0", "p1", "p2"]
    assert (
        len(data["prompts"][0]["runs"]["greedy"][0]["rows"]) == 3
        and "rows" not in data["prompts"][1]["runs"]["greedy"][0]
    )


def test_a_batch_row_that_differs_from_greedy_is_named(tiny_pair, monkeypatch):
    target, _, tokenizer, *_ = tiny_pair
    _corrupt_cascade(monkeypatch, 1, -1)
    encoded = [(Prompt(p.id, "copy", p.text), inputs) for p, inputs in _encoded(tokenizer)[:2]]
    result = run_benchmark(
        target,
        encoded,
        METHODS[:1] + METHODS[3:4],
        {},
        dict(max_new_tokens=6, do_sample=False, pad_token_id=0),
        repeats=1,
        warmup_tokens=0,
        measure_costs=False,
        batch_size=2,
    )
    assert result.mismatches == [Mismatch("p1", "cascade", "cascade", 5, 1)]


def test_swi_and_speedup_arithmetic():
    """SWI = greedy's cost / the method's, cost = sum of forward passes x cost per pass; speedup from wall time."""

    def run(seconds, passes, fwd_s):
        return Run(seconds, 10, list(range(10)), passes, fwd_s)

    prompt = PromptResult(
        Prompt("a", "c", "x"),
        5,
        {
            "greedy": [run(2.0, {"target": 10}, {"target": 1.8}), run(3.0, {"target": 10}, {"target": 2.0})],
            "cs": [run(1.0, {"target": 4, "d": 8}, {"target": 0.5, "d": 0.3})],
        },
    )
    result = BenchmarkResult(
        methods=[Method("greedy", "greedy"), Method("cs", "cascade", ("d",))],
        prompts=[prompt],
        costs={"target": ModelCost(100, {1: 0.2}), "d": ModelCost(10, {1: 0.05})},
        settings={},
        machine={},
    )
    greedy, cs = summarize(result)
    assert greedy.speedup == pytest.approx(1.0) and greedy.swi_params == pytest.approx(1.0)
    assert cs.speedup == pytest.approx(2.0)  # median of greedy's 2 runs is the 2.0 s one (lower middle)
    assert cs.swi_params == pytest.approx(1000 / (400 + 80))
    assert cs.swi_latency == pytest.approx(2.0 / (0.8 + 0.4))
    assert cs.outside_forward_fraction == pytest.approx(0.2)
    assert greedy.outside_forward_fraction == pytest.approx(0.1)
    assert cs.tokens_per_target_forward == pytest.approx(2.5)


def test_swi_latency_prices_a_packed_drafter_as_it_ran():
    """A cascade run that packed its drafter (`LevelStats.packing`) is priced at the drafter's `NAME (packed)` latency;
    a run that did not, at the drafter as loaded."""
    from hf_cascade.stats import LevelStats

    def run(packing):
        levels = [
            {**asdict(LevelStats("target", "target", forward_passes=4)), "acceptance_rate": None},
            {
                **asdict(LevelStats("assistant_0", "assistant", forward_passes=8, packing=packing)),
                "acceptance_rate": None,
            },
        ]
        return Run(1.0, 10, list(range(10)), {"target": 4, "d": 8}, {"target": 0.5, "d": 0.3}, levels)

    greedy = Run(2.0, 10, list(range(10)), {"target": 10}, {"target": 1.8})
    prompt = PromptResult(
        Prompt("a", "c", "x"), 5, {"greedy": [greedy], "packed": [run("packed")], "off": [run("off")]}
    )
    methods = [Method("greedy", "greedy"), Method("packed", "cascade", ("d",)), Method("off", "cascade", ("d",))]
    costs = {"target": ModelCost(100, {1: 0.2}), "d": ModelCost(10, {1: 0.05}), "d (packed)": ModelCost(10, {1: 0.02})}
    _, packed, off = summarize(BenchmarkResult(methods, [prompt], costs, {}, {}))
    assert packed.swi_latency == pytest.approx(2.0 / (0.8 + 8 * 0.02))
    assert off.swi_latency == pytest.approx(2.0 / (0.8 + 8 * 0.05))


def test_memory_drafts_are_reported_apart():
    """A Max-Gram level's memory counters add up over prompts, show as `max_gram (memory)` and survive the JSON."""
    from hf_cascade.stats import LevelStats

    def run(memory_drafted, memory_accepted):
        levels = [
            {**asdict(LevelStats("target", "target", forward_passes=4)), "acceptance_rate": None},
            {
                **asdict(
                    LevelStats(
                        "max_gram",
                        "max_gram",
                        drafted=12,
                        accepted=8,
                        memory_drafted=memory_drafted,
                        memory_accepted=memory_accepted,
                    )
                ),
                "acceptance_rate": 8 / 12,
            },
        ]
        return Run(1.0, 10, list(range(10)), {"target": 4}, {"target": 0.5}, levels)

    greedy = Run(2.0, 10, list(range(10)), {"target": 10}, {"target": 1.8})
    prompts = [
        PromptResult(Prompt(i, "c", "x"), 5, {"greedy": [greedy], "mem": [run(*counts)]})
        for i, counts in (("a", (6, 3)), ("b", (4, 4)))
    ]
    result = BenchmarkResult([Method("greedy", "greedy"), Method("mem", "cascade", memory=True)], prompts, {}, {}, {})
    _, mem = summarize(result)
    assert mem.levels["max_gram"]["memory_drafted"] == 10 and mem.levels["max_gram"]["memory_accepted"] == 7
    assert mem.acceptance == {"max_gram": pytest.approx(16 / 24), "max_gram (memory)": pytest.approx(0.7)}
    assert "| mem | max_gram (memory) | - | - | 10 | 7 | 0.70 | - |" in to_markdown(result)
    summary = to_json_dict(result)["summary"]
    assert [SummaryRow.from_dict(r, "x").to_dict() for r in summary] == summary


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_prompts") / "p.jsonl"
    path.write_text("".join(json.dumps({"id": i, "category": c, "prompt": t}) + "\n" for i, c, t in PROMPTS))
    return str(path)


def test_cli_bench_writes_reports(tiny_pair, prompt_file, tmp_path, capsys):
    *_, target_dir, drafter_dir = tiny_pair
    out = tmp_path / "out"
    # The default methods, cascade:d with fixed lengths (the controller would skip a drafter as large as the target).
    fixed = CascadeConfig(adaptive_drafters=False).save_pretrained(tmp_path / "fixed")
    argv = ["bench", "--target", target_dir, "--drafter", f"d={drafter_dir}", "--prompts", prompt_file]
    argv += [
        "--method",
        "prompt-lookup",
        "--method",
        "assisted:d",
        "--method",
        "cascade",
        "--method",
        f"cascade:d@{fixed}",
    ]
    argv += ["--max-new-tokens", "8", "--repeats", "1", "--out", str(out), "--no-progress"]
    status, stdout, err = run_cli(argv, capsys)
    assert status == 0, err
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == SCHEMA and data["mismatches"] == []
    assert [m["label"] for m in data["methods"]] == ["greedy", "prompt-lookup", "assisted:d", "cascade", "cascade:d"]
    assert data["settings"]["drafters"] == {"d": drafter_dir} and data["settings"]["max_new_tokens"] == 8
    assert data["machine"]["torch"] == torch.__version__
    assert {(r["category"], r["method"]) for r in data["summary"]} >= {("all", "cascade:d"), ("copy", "greedy")}
    report = (out / "report.md").read_text()
    assert "hf-cascade bench --target" in report and "Every run of every method produced exactly greedy's" in report
    assert "| acceptance | fitted cost | mean draft | skipped |" in report and re.search(
        r"\| cascade:d \| d \| .* \| \d+\.\d\d \+ \d\.\d{3}k \|", report
    )
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert "cascade:d" in stdout and "NO" not in stdout
    # What the minutes before the timed runs are spent on is said, phase by phase.
    assert "measuring forward-pass cost 1/2: target" in err and "warm-up 5/5: cascade:d" in err
    # The committed-schema round trip: the file the CLI wrote loads as summary rows again.
    assert [SummaryRow.from_dict(r, "x").to_dict() for r in data["summary"]] == data["summary"]


def test_cli_bench_batch_size(tiny_pair, prompt_file, tmp_path, capsys):
    *_, target_dir, drafter_dir = tiny_pair
    out = tmp_path / "out"
    argv = ["bench", "--target", target_dir, "--drafter", f"d={drafter_dir}", "--prompts", prompt_file]
    argv += ["--max-new-tokens", "8", "--repeats", "1", "--out", str(out), "--no-progress", "--no-plot"]
    status, stdout, err = run_cli([*argv, "--batch-size", "2"], capsys)
    assert status == 0, err
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["batch_size"] == 2 and data["mismatches"] == []
    assert [m["label"] for m in data["methods"]] == ["greedy", "cascade", "cascade:d"]
    assert [p["id"] for p in data["prompts"]] == ["p0+p1", "p2"]  # per category, in order
    assert all(r["identical"] for r in data["summary"])
    report = (out / "report.md").read_text()
    assert "- batch size 2: each category's prompts in batches of 2" in report
    assert "| throughput (tok/s over the batch) |" in report
    assert "medians; 3 prompts;" in report  # prompts, not batches
    for where in (report, stdout, err):
        assert "prompt-lookup: not run: cannot batch (transformers' prompt lookup refuses batches" in where
        assert "assisted:d: not run: cannot batch (transformers' assisted generation refuses batches" in where
    assert "2 batches of up to 2 x 3 methods x 1 repeats = 6 timed runs" in err
    # Batch size 1 is today's benchmark: no batch size recorded, no not-run list.
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    data = json.loads((out / "results.json").read_text())
    assert "batch_size" not in data["settings"] and "not_run" not in data
    assert "rows" not in data["prompts"][0]["runs"]["greedy"][0]
    assert "not run" not in (out / "report.md").read_text() and "| tok/s |" in (out / "report.md").read_text()


def test_cli_bench_reports_a_requested_method_it_could_not_run(tiny_pair, prompt_file, tmp_path, capsys, monkeypatch):
    """`--method suffix` without the optional module: skipped with a message, and the report says it was asked for."""
    import hf_cascade.cli.bench as cli_bench

    monkeypatch.setattr(cli_bench, "suffix_available", lambda: "No module named 'arctic_inference'")
    *_, target_dir, _ = tiny_pair
    argv = ["bench", "--target", target_dir, "--prompts", prompt_file, "--method", "cascade", "--method", "suffix"]
    argv += ["--max-new-tokens", "4", "--repeats", "1", "--out", str(tmp_path), "--no-progress", "--no-plot"]
    status, stdout, err = run_cli(argv, capsys)
    assert status == 0, err
    why = "suffix: not run: the optional suffix module is missing (No module named 'arctic_inference')"
    report = (tmp_path / "report.md").read_text()
    assert "## Not run" in report and why in report and why in stdout
    data = json.loads((tmp_path / "results.json").read_text())
    assert [m["label"] for m in data["methods"]] == ["greedy", "cascade"] and list(data["not_run"]) == ["suffix"]


def test_cli_bench_methods_and_builtin(tiny_pair, tmp_path, capsys):
    *_, target_dir, drafter_dir = tiny_pair
    argv = ["bench", "--target", target_dir, "--drafter", f"d={drafter_dir}", "--builtin", "math"]
    argv += ["--sample", "1", "--method", "mine=cascade:d", "--method", "greedy", "--no-chat-template"]
    argv += ["--max-new-tokens", "4", "--repeats", "1", "--out", str(tmp_path), "--no-plot", "--no-progress"]
    argv += ["--onednn-linear"]
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert "linear layers for oneDNN" in err
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["onednn_linear"] is True and data["mismatches"] == []
    assert "(linear layers packed for oneDNN, all methods)" in (tmp_path / "report.md").read_text()
    # SWI by parameter count uses the models' sizes before packing.
    assert data["costs"]["target"]["parameters"] == sum(p.numel() for p in tiny_pair[0].parameters())
    assert [m["label"] for m in data["methods"]] == ["greedy", "mine"]
    assert len(data["prompts"]) == 1 and data["prompts"][0]["category"] == "math"
    assert not (tmp_path / "speedup.png").exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--drafter", "d"], r"--drafter 'd': write NAME=ID_OR_PATH"),
        (["--drafter", "target=x"], r"the name 'target' is reserved"),
        (["--method", "assisted:zz"], r"drafter\(s\) \['zz'\] not registered; add --drafter NAME=ID_OR_PATH"),
        (["--method", "cascade", "--method", "cascade"], r"the label 'cascade' is used twice"),
        (["--method", "beam"], r"--method: method 'beam': unknown kind"),
        (["--dataset", "gsm8k"], r"--dataset and --data-file go together"),
        (["--builtin", "poems"], r"--builtin: unknown set\(s\) \['poems'\]"),
        (["--prompts", "/nope.jsonl"], r"prompts: .*No such file"),
        (["--repeats", "0"], r"argument --repeats: expected a positive integer"),
        (["--batch-size", "0"], r"argument --batch-size: expected a positive integer"),
    ],
)
def test_cli_bench_errors(tiny_pair, extra, match, capsys):
    *_, target_dir, _ = tiny_pair
    status, _, err = run_cli(["bench", "--target", target_dir, "--no-plot", *extra], capsys)
    assert status == 2
    assert re.search(match, err), err


def test_cli_bench_unused_drafter(tiny_pair, capsys):
    *_, target_dir, drafter_dir = tiny_pair
    argv = ["bench", "--target", target_dir, "--drafter", f"d={drafter_dir}", "--method", "cascade", "--no-plot"]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and "--drafter ['d']: registered but no --method uses it" in err


# ------------------------------------------------------------------------------------------ methods that remember
def _run_without_drafters(target, tokenizer, methods, repeats, warmup_tokens, **kwargs):
    """A quick benchmark of drafter-free methods (8 greedy tokens, no cost measurement) that must match greedy."""
    result = run_benchmark(
        target,
        _encoded(tokenizer),
        methods,
        {},
        dict(max_new_tokens=8, do_sample=False, pad_token_id=0),
        repeats=repeats,
        warmup_tokens=warmup_tokens,
        measure_costs=False,
        **kwargs,
    )
    assert result.mismatches == []
    return result


def test_remembering_methods_start_each_prompt_from_the_earlier_answers_only(tiny_pair, monkeypatch):
    """cascade+memory: every run of prompt i sees the greedy answers of prompts < i, never its own (from a repeat)."""
    from hf_cascade import generation

    target, _, tokenizer, *_ = tiny_pair
    seen = []
    original = generation.generate

    @functools.wraps(original)  # generate() passes a callable only the arguments its signature names
    def spy(*args, max_gram_memory=None, **kwargs):
        seen.append(None if max_gram_memory is None else max_gram_memory.documents())
        return original(*args, max_gram_memory=max_gram_memory, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    methods = [Method("greedy", "greedy"), Method("mem", "cascade", memory=True)]
    result = _run_without_drafters(target, tokenizer, methods, repeats=2, warmup_tokens=2)
    answers = [p.runs["greedy"][0].ids for p in result.prompts]
    assert seen[0] == []  # the warm-up: a fresh memory
    assert seen[1:] == [[], [], [answers[0]], [answers[0]], [answers[0], answers[1]], [answers[0], answers[1]]]


@pytest.mark.skipif(suffix_available() is not None, reason="arctic_inference.suffix_decoding is not built")
def test_suffix_method_keeps_one_response_per_earlier_prompt(tiny_pair):
    target, _, tokenizer, *_ = tiny_pair
    methods = [Method("greedy", "greedy"), parse_method("suffix"), parse_method("suffix:local")]
    states = {}
    original = MethodState.__init__

    def record(self, method, *args):
        original(self, method, *args)
        states[method.label] = self

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MethodState, "__init__", record)
        _run_without_drafters(target, tokenizer, methods, repeats=3, warmup_tokens=0)
    # One recorded answer per prompt, and no run's own response: a repeat never copies its own earlier answer.
    assert sorted(states["suffix"].anchor.cache.cached_requests) == [-3, -2, -1]
    assert len(states["suffix:local"].anchor.cache.cached_requests) == 0


# ------------------------------------------------------------------------------------------ multi-turn prompts
CONVERSATION = Prompt("c", "chat", "w1 w2 w3 w4 w5 w1 w2", followups=("w9 w1 w2 w3",))


def _chat_turns(tokenizer, seen):
    """`ChatTurns` over the tiny word tokenizer: the chat is the messages' contents joined (recorded in `seen`)."""

    def encode(messages):
        seen.append(messages)
        text = " ".join(m["content"] for m in messages)
        return {k: v for k, v in tokenizer(text, return_tensors="pt").items() if k != "token_type_ids"}

    return ChatTurns(encode, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))


def _conversation_benchmark(tokenizer, target, methods, seen, **kwargs):
    first = {k: v for k, v in tokenizer(CONVERSATION.text, return_tensors="pt").items() if k != "token_type_ids"}
    return run_benchmark(
        target,
        [(CONVERSATION, first), _encoded(tokenizer)[1]],
        methods,
        {},
        dict(max_new_tokens=8, do_sample=False, pad_token_id=0),
        repeats=2,
        warmup_tokens=0,
        measure_costs=False,
        chat_turns=_chat_turns(tokenizer, seen),
        **kwargs,
    )


def test_every_turn_of_a_conversation_is_benchmarked_with_its_history(tiny_pair):
    target, _, tokenizer, *_ = tiny_pair
    seen = []
    methods = [Method("greedy", "greedy"), Method("cascade", "cascade"), Method("mem", "cascade", memory=True)]
    if suffix_available() is None:
        methods.append(parse_method("suffix"))
    result = _conversation_benchmark(tokenizer, target, methods, seen)
    assert result.mismatches == []
    assert [(p.id, p.turn) for p in result.prompts] == [("c/turn1", 1), ("c/turn2", 2), ("p1", None)]
    turn1, turn2 = result.prompts[:2]
    assert all(len(runs) == 2 for p in (turn1, turn2) for runs in p.runs.values())
    # Each method's second turn carries the chat so far, with that method's own first answer.
    answer = tokenizer.decode(turn1.runs["greedy"][0].ids, skip_special_tokens=True)
    history = [
        {"role": "user", "content": CONVERSATION.text},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": CONVERSATION.followups[0]},
    ]
    assert seen == [history] * len(methods)
    assert turn2.prompt_tokens > turn1.prompt_tokens
    data = to_json_dict(result)
    assert [(p["id"], p["turn"]) for p in data["prompts"]] == [("c/turn1", 1), ("c/turn2", 2), ("p1", None)]
    assert "| c/turn2 | chat |" in to_markdown(result)


def test_every_turn_is_checked_against_greedy(tiny_pair, monkeypatch):
    target, _, tokenizer, *_ = tiny_pair
    _corrupt_cascade(monkeypatch, 0, -1)
    seen = []
    result = _conversation_benchmark(
        tokenizer, target, [Method("greedy", "greedy"), Method("cascade", "cascade")], seen
    )
    assert {(m.prompt_id, m.method) for m in result.mismatches} == {
        ("c/turn1", "cascade"),
        ("c/turn2", "cascade"),
        ("p1", "cascade"),
    }
    # The cascade's history holds its own (differing) first answer, not greedy's.
    greedy_answer, cascade_answer = seen[0][1]["content"], seen[1][1]["content"]
    assert cascade_answer == tokenizer.decode(result.prompts[0].runs["cascade"][0].ids, skip_special_tokens=True)
    assert cascade_answer != greedy_answer


def test_a_conversation_needs_chat_turns(tiny_pair):
    target, _, tokenizer, *_ = tiny_pair
    first = {k: v for k, v in tokenizer(CONVERSATION.text, return_tensors="pt").items() if k != "token_type_ids"}
    with pytest.raises(CascadeValueError, match=r"prompt\(s\) \['c'\] have several turns: pass chat_turns="):
        run_benchmark(target, [(CONVERSATION, first)], [Method("greedy", "greedy")], {}, {}, measure_costs=False)


def test_cli_bench_runs_conversations(tiny_pair, tmp_path, capsys):
    *_, target_dir, _ = tiny_pair
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"id": "c", "category": "chat", "prompt": ["w1 w2 w3", "w4 w1 w2"]}) + "\n")
    out = tmp_path / "out"
    argv = ["bench", "--target", target_dir, "--prompts", str(path), "--method", "cascade+memory"]
    argv += ["--max-new-tokens", "6", "--repeats", "1", "--warmup-tokens", "0", "--out", str(out), "--no-plot"]
    status, _, err = run_cli([*argv, "--no-progress"], capsys)
    assert status == 0, err
    assert "1 prompts (2 turns) x 2 methods x 1 repeats = 4 timed runs" in err
    data = json.loads((out / "results.json").read_text())
    assert [p["id"] for p in data["prompts"]] == ["c/turn1", "c/turn2"] and data["mismatches"] == []
    status, _, err = run_cli([*argv, "--no-progress", "--no-chat-template"], capsys)
    assert status == 2 and "prompts ['c'] have several turns, which need the chat template" in err


# ------------------------------------------------------------------------------------------ warm start (--memory)
def test_remembering_methods_start_from_the_given_memory(tiny_pair, monkeypatch):
    from hf_cascade import generation

    target, _, tokenizer, *_ = tiny_pair
    seen = []
    original = generation.generate

    @functools.wraps(original)
    def spy(*args, max_gram_memory=None, **kwargs):
        seen.append(None if max_gram_memory is None else max_gram_memory.documents())
        return original(*args, max_gram_memory=max_gram_memory, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    start = MaxGramMemory(vocab_size=len(WORDS))
    start.add([7, 8, 9, 10])
    methods = [Method("greedy", "greedy"), Method("mem", "cascade", memory=True)]
    result = _run_without_drafters(target, tokenizer, methods, repeats=1, warmup_tokens=0, memory=start)
    first = result.prompts[0].runs["greedy"][0].ids
    assert seen[:2] == [[[7, 8, 9, 10]], [[7, 8, 9, 10], first]]  # a copy of it, then the earlier answers
    assert start.documents() == [[7, 8, 9, 10]]  # the benchmark never changes the caller's memory
    with pytest.raises(CascadeValueError, match=r"built for a vocabulary of 10 tokens but the target's has 64"):
        _run_without_drafters(target, tokenizer, methods, 1, 0, memory=MaxGramMemory(vocab_size=10))


def test_cli_bench_memory_flag(tiny_pair, tmp_path, capsys):
    *_, target_dir, _ = tiny_pair
    path = tmp_path / "memory.safetensors"
    memory = MaxGramMemory(vocab_size=len(WORDS))
    memory.add([7, 8, 9, 10])
    memory.save(path)
    base = ["bench", "--target", target_dir, "--builtin", "math", "--sample", "1", "--max-new-tokens", "4"]
    base += ["--repeats", "1", "--warmup-tokens", "0", "--no-plot", "--no-progress", "--out", str(tmp_path / "o")]
    status, _, err = run_cli([*base, "--method", "cascade+memory", "--memory", str(path)], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "o" / "results.json").read_text())["settings"]["memory"] == str(path)
    assert f"started from the Max-Gram memory `{path}`" in (tmp_path / "o" / "report.md").read_text()
    assert MaxGramMemory.load(path).documents() == [[7, 8, 9, 10]]  # read, never written
    status, _, err = run_cli([*base, "--method", "cascade", "--memory", str(path)], capsys)
    assert status == 2 and "--memory warm-starts the methods that remember" in err
    status, _, err = run_cli([*base, "--method", "cascade+memory", "--memory", str(tmp_path / "no.st")], capsys)
    assert status == 2 and "--memory: MaxGramMemory.load:" in err and "does not exist" in err
    MaxGramMemory(vocab_size=10).save(tmp_path / "small.st")
    status, _, err = run_cli([*base, "--method", "cascade+memory", "--memory", str(tmp_path / "small.st")], capsys)
    assert status == 2 and "built for a vocabulary of 10 tokens but the target's has 64" in err


def test_batch_bound_script_times_batched_passes_and_reads_acceptance(llama):
    """`benchmarks/batch_bound.py`: its timing loop runs on a real (tiny) model with a left-padded batch, and it reads
    the highest acceptance a benchmark measured per source."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "batch_bound.py"
    spec = importlib.util.spec_from_file_location("batch_bound", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    batch = {
        "input_ids": torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]]),
        "attention_mask": torch.tensor([[0, 1, 1, 1], [1] * 4]),
    }
    curve = module.batched_curve(llama, batch, range(1, 4), repeats=2)
    assert len(curve) == 3 and all(s > 0 for s in curve)
    results = {
        "summary": [
            {"category": "all", "acceptance": {"q05": 0.7, "max_gram": 0.2}},
            {"category": "all", "acceptance": {"q05": 0.8}},
            {"category": "gsm8k", "acceptance": {"q05": 0.9}},
            {"category": "all", "acceptance": None},
        ]
    }
    assert module.best_acceptance(results, "q05") == 0.8
    assert module.best_acceptance(results, "max_gram") == 0.2
    assert module.best_acceptance(results, "other") is None
