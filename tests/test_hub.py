"""Hub usage: the exported custom_generate repository, CascadeConfig.push_to_hub/from_pretrained, and the model card.

Nothing touches the network: repositories are local folders and uploads are captured by patching `HfApi`.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModelForCausalLM

import hf_cascade
from hf_cascade import cli
from hf_cascade.card import model_card_section
from hf_cascade.hub import ExistingFilesError, bundled_sources, export_hub, requirements

from conftest import Recorder

NEW = 20
RESULTS = Path(__file__).with_name("data") / "bench_results.json"


def run_cli(argv, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cascade_repo")
    export_hub(out, cascade_config={"lenience": 2.0}, target="org/target", assistants=["org/small"], repo_id="u/r")
    return str(out)


# ------------------------------------------------------------------------------------------- the exported repository


def test_export_writes_the_custom_generate_layout(repo):
    names = sorted(str(p.relative_to(repo)) for p in Path(repo).rglob("*") if p.is_file())
    bundled = [f"custom_generate/{name}" for name in bundled_sources()]
    assert names == sorted(
        [
            "README.md",
            "cascade_config.json",
            "custom_generate/generate.py",
            "custom_generate/requirements.txt",
            *bundled,
        ]
    )
    reqs = Path(repo, "custom_generate", "requirements.txt").read_text().split()
    assert reqs == requirements() and [r.split(">")[0] for r in reqs] == ["transformers", "torch", "safetensors"]
    assert reqs[0].startswith("transformers>=5")  # the lower bound first: transformers checks the first bound
    card = ModelCard.load(os.path.join(repo, "README.md"))
    assert card.data.library_name == "transformers"
    assert {"custom_generate", "speculative-decoding"} <= set(card.data.tags)
    for needle in (
        'custom_generate="u/r"',
        "trust_remote_code=True",
        "assistant_models",
        "cascade_config",
        "org/small",
    ):
        assert needle in card.text
    assert "pip install" not in card.text and "cascade_config={'lenience': 2.0}" in card.text
    assert hf_cascade.CascadeConfig.from_pretrained(repo) == hf_cascade.CascadeConfig(lenience=2.0)


def test_bundle_is_the_installed_generation_code_and_imports_no_hf_cascade(repo):
    """The bundle is generated from the installed modules (it cannot drift) and needs no hf_cascade package."""
    package = Path(hf_cascade.__file__).parent
    bundled = bundled_sources()
    assert {"hub.py", "generation.py", "cascade.py", "config.py", "max_gram.py"} <= set(bundled)
    assert {"drafter_packing.py", "cpu.py"} <= set(bundled)  # drafters packed during the call (`pack_drafters`)
    assert not {"loading.py", "card.py"} & set(bundled)  # only what generation imports: no CLI/bench
    for name, text in bundled.items():
        assert Path(repo, "custom_generate", name).read_text() == text
        original = (package / name).read_text()
        body = text.split("\n", 2)[2]  # after the two header lines
        assert (
            body.replace(
                f"__version__ = {hf_cascade.__version__!r}  # bundled by export_hub", "from . import __version__"
            )
            == original
        )
        for node in ast.walk(ast.parse(text)):  # what transformers' loader can copy: flat sibling imports only
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module and "." not in node.module and f"{node.module}.py" in bundled
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                top = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(t.split(".")[0] != "hf_cascade" for t in top), (name, top)


def test_transformers_loader_finds_the_whole_bundle_and_only_installed_imports(repo):
    """What transformers' own loader reads (Hub repos: each file is downloaded and its imports checked)."""
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    folder = Path(repo, "custom_generate")
    copied = {Path(p).name for p in get_relative_import_files(str(folder / "generate.py"))}
    assert copied == set(bundled_sources())  # every bundled module is reached, and nothing the bundle lacks
    imported = set().union(*(get_imports(str(folder / name)) for name in [*copied, "generate.py"]))
    third_party = {name for name in imported if name not in sys.stdlib_module_names}
    # requirements.txt plus what transformers itself depends on (so any transformers install has them)
    assert third_party <= {"torch", "transformers", "safetensors", "huggingface_hub", "packaging", "tqdm"}, third_party


def test_exported_folder_runs_without_hf_cascade_installed(repo, tmp_path):
    """In a fresh interpreter where `import hf_cascade` fails, the folder runs on transformers alone; greedy exact."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_cascade"] = None  # any import of an installed (or editable) hf_cascade raises ImportError
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1)
        target = LlamaForCausalLM(config).double().eval()
        torch.manual_seed(1)
        assistant = LlamaForCausalLM(LlamaConfig(**{{**config.to_dict(), "num_hidden_layers": 1}})).double().eval()
        ids = torch.tensor([[0, 5, 6, 7, 8, 9, 5, 6, 7, 8]])
        plain = target.generate(ids, max_new_tokens=24, do_sample=False)
        out = target.generate(ids, custom_generate={repo!r}, trust_remote_code=True, assistant_models=[assistant],
                              cascade_config={{"lenience": 2.0}}, max_new_tokens=24, do_sample=False,
                              return_dict_in_generate=True)
        assert torch.equal(out.sequences, plain), (out.sequences, plain)
        assert type(out).__module__.startswith("transformers_modules."), type(out).__module__
        assert [level.name for level in out.cascade_stats.levels] == ["target", "assistant_0", "max_gram"]
        assert not [m for m in sys.modules if m.startswith("hf_cascade.")]
        print("OK", out.cascade_stats.target.forward_passes)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not this checkout either
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


def test_generate_from_the_folder_is_identical_to_plain_greedy(repo, llama, llama_drafters, prompt):
    plain = llama.generate(prompt, max_new_tokens=NEW, do_sample=False)
    out = llama.generate(
        prompt,
        custom_generate=repo,
        trust_remote_code=True,
        assistant_models=[llama_drafters[1]],
        cascade_config=hf_cascade.CascadeConfig.from_pretrained(repo),
        max_new_tokens=NEW,
        do_sample=False,
        return_dict_in_generate=True,
    )
    assert type(out).__name__ == "CascadeDecoderOnlyOutput" and "custom_generate" in type(out).__module__  # bundled
    assert torch.equal(out.sequences, plain)
    assert [level.name for level in out.cascade_stats.levels] == ["target", "assistant_0", "max_gram"]
    # No assistant models: target + Max-Gram.
    assert torch.equal(
        llama.generate(input_ids=prompt, custom_generate=repo, trust_remote_code=True, max_new_tokens=NEW), plain
    )


def test_folder_generate_receives_streamer_directly(repo, llama, llama_drafters, prompt):
    recorder = Recorder()
    out = llama.generate(
        prompt,
        custom_generate=repo,
        trust_remote_code=True,
        assistant_models=[llama_drafters[0]],
        max_new_tokens=NEW,
        do_sample=False,
        streamer=recorder,
    )
    assert recorder.puts[0] == prompt[0].tolist()  # the prompt once: transformers does not stream it itself here
    assert [t for chunk in recorder.puts[1:] for t in chunk] == out[0, prompt.shape[1] :].tolist()
    assert recorder.ended and len(recorder.puts) - 1 < NEW


def test_folder_generate_errors(repo, llama, llama_drafters, prompt):
    with pytest.raises(ValueError, match="trust_remote_code"):
        llama.generate(prompt, custom_generate=repo, trust_remote_code=False, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"assistant_models=\[\.\.\.\]"):
        llama.generate(
            prompt, custom_generate=repo, trust_remote_code=True, assistant_model=llama_drafters[0], max_new_tokens=4
        )
    with pytest.raises(ValueError, match="not both"):
        llama.generate(
            prompt,
            custom_generate=repo,
            trust_remote_code=True,
            streamer=Recorder(),
            cascade_streamer=Recorder(),
            max_new_tokens=4,
        )


def test_model_repo_with_custom_generate_overrides_generate(repo, llama, prompt, tmp_path):
    """A model saved next to the exported files: from_pretrained(trust_remote_code=True) makes generate the cascade."""
    llama.save_pretrained(tmp_path)
    shutil.copytree(repo, tmp_path, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, dtype=torch.float64)
    out = model.generate(prompt, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)  # positional ok
    assert type(out).__name__ == "CascadeDecoderOnlyOutput" and "custom_generate" in type(out).__module__
    assert torch.equal(out.sequences, llama.generate(prompt, max_new_tokens=NEW, do_sample=False))


def test_encoder_decoder_from_the_folder(repo, t5):
    inputs = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 1]])
    plain = t5.generate(inputs, max_new_tokens=12, do_sample=False)
    out = t5.generate(inputs, custom_generate=repo, trust_remote_code=True, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, plain)


def test_export_hub_cli(tmp_path, capsys):
    config_dir = tmp_path / "config"
    hf_cascade.CascadeConfig(k_matrix=[[4, 2], [0, 8]], lenience=1.5).save_pretrained(config_dir)
    out = tmp_path / "repo"
    argv = ["export-hub", str(out), "--cascade-config", str(config_dir), "--target", "org/t", "--assistant", "org/a"]
    status, stdout, _ = run_cli(argv, capsys)
    assert status == 0 and "custom_generate/generate.py" in stdout
    assert hf_cascade.CascadeConfig.from_pretrained(out).k_matrix == [[4, 2], [0, 8]]
    assert "[4, 2]" in (out / "README.md").read_text()  # the shipped config is shown in the card
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and "pass --force" in err and "README.md" in err  # never overwrites silently
    assert "overwrite=True" not in err  # the CLI user is told the flag, not the Python argument
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    status, _, err = run_cli(["export-hub", str(out), "--cascade-config", str(tmp_path / "nope")], capsys)
    assert status == 2 and "does not exist" in err


def test_export_refusal_names_overwrite_for_python_users(tmp_path):
    export_hub(tmp_path)
    with pytest.raises(ExistingFilesError, match=r"README\.md.*pass overwrite=True to replace them") as e:
        export_hub(tmp_path)
    assert isinstance(e.value, FileExistsError) and "--force" not in str(e.value)


def test_export_never_writes_through_a_symlink(tmp_path):
    """A README.md (or custom_generate/) that links outside the folder: refused, and --force replaces the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "README.md").write_text("someone else's file")
    (outside / "code").mkdir()
    out = tmp_path / "repo"
    out.mkdir()
    (out / "README.md").symlink_to(outside / "README.md")
    (out / "custom_generate").symlink_to(outside / "code", target_is_directory=True)
    with pytest.raises(ExistingFilesError, match="README.md"):
        export_hub(out)
    export_hub(out, overwrite=True)
    assert (outside / "README.md").read_text() == "someone else's file" and not any((outside / "code").iterdir())
    assert not (out / "README.md").is_symlink() and "custom_generate" in (out / "README.md").read_text()
    assert not (out / "custom_generate").is_symlink() and (out / "custom_generate" / "generate.py").is_file()
    # A dangling link counts as existing too (os.path.exists would say it is not there and write through it).
    (out / "cascade_config.json").symlink_to(outside / "missing.json")
    with pytest.raises(ExistingFilesError, match="cascade_config.json"):
        export_hub(out, cascade_config={"lenience": 2.0})
    export_hub(out, cascade_config={"lenience": 2.0}, overwrite=True)
    assert not (outside / "missing.json").exists() and not (out / "cascade_config.json").is_symlink()


def test_export_hub_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="wrap one"):
        export_hub(tmp_path, assistants="org/a")
    with pytest.raises(TypeError, match="cascade_config"):
        export_hub(tmp_path, cascade_config=[[4]])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        export_hub(tmp_path / "file")


# ------------------------------------------------------------------------------------ CascadeConfig on the Hub


@pytest.fixture
def fake_hub(monkeypatch):
    """Patch HfApi so push_to_hub runs offline; returns the captured {path_in_repo: bytes} of each commit."""
    commits: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        files = {}
        for op in operations:
            with open(op.path_or_fileobj, "rb") as f:
                files[op.path_in_repo] = f.read()
        commits.append({"repo_id": repo_id, "message": commit_message, "files": files, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0"

    def load_card(repo_id, **kwargs):
        raise EntryNotFoundError(f"{repo_id} has no README.md")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, **kwargs: None)
    monkeypatch.setattr(ModelCard, "load", load_card)
    return commits


def test_push_to_hub_uploads_the_config_and_a_card(fake_hub):
    config = hf_cascade.CascadeConfig(k_matrix=[[4, 2], [0, 8]], lenience=2.0, max_gram={"max_ngram_size": 4})
    result = config.push_to_hub("user/cascade", tags=["hf_cascade"], revision="dev")
    assert result == "https://huggingface.co/user/cascade/commit/0"
    (commit,) = fake_hub
    assert commit["repo_id"] == "user/cascade" and commit["message"] == "Upload config"
    assert commit["revision"] == "dev"
    assert sorted(commit["files"]) == ["README.md", "cascade_config.json"]
    assert hf_cascade.CascadeConfig.from_dict(json.loads(commit["files"]["cascade_config.json"])) == config
    assert "hf_cascade" in commit["files"]["README.md"].decode()


def test_from_pretrained_hub_id_downloads_cascade_config(monkeypatch, tmp_path):
    import huggingface_hub

    config = hf_cascade.CascadeConfig(lenience=3.0)
    path = config.save_pretrained(tmp_path)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert hf_cascade.CascadeConfig.from_pretrained("user/cascade", revision="v1") == config
    assert calls == [("user/cascade", "cascade_config.json", {"revision": "v1"})]


def test_save_pretrained_into_a_local_repo_folder(repo, tmp_path):
    """save_pretrained/from_pretrained on a folder that also holds a custom_generate repository."""
    shutil.copytree(repo, tmp_path, dirs_exist_ok=True)
    config = hf_cascade.CascadeConfig(k_matrix=[[6]])
    config.save_pretrained(tmp_path)
    assert hf_cascade.CascadeConfig.from_pretrained(str(tmp_path)) == config
    assert (tmp_path / "custom_generate" / "generate.py").is_file()


# ------------------------------------------------------------------------------------------------- the model card


def test_card_section_from_bench_results(tmp_path, capsys):
    out = tmp_path / "card.md"
    status, _, _ = run_cli(
        ["card", "--target", "org/target-1.5b", "--results", str(RESULTS), "--out", str(out)], capsys
    )
    assert status == 0
    text = out.read_text()
    assert text.startswith("## Faster generation with hf_cascade")
    assert "**1.87x**" in text and "**cascade (small, tiny)** (recommended)" in text
    assert "1. `org/target-0.5b` (small)\n2. `org/target-0.1b` (tiny)" in text
    config_json = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert hf_cascade.CascadeConfig.from_dict(json.loads(config_json)) == hf_cascade.CascadeConfig(
        k_matrix=[[4, 0, 2], [0, 4, 2], [0, 0, 16]], lenience=2.0
    )
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    compile(snippet, "card-snippet", "exec")  # valid Python
    assert 'from_pretrained("org/target-1.5b"' in snippet and "assistant_models=[assistant_0, assistant_1]" in snippet
    assert "| rewrite | 3 |" in text and "| assistant_0 | 72% |" in text
    # Without --out the section goes to standard output.
    status, stdout, _ = run_cli(["card", "--target", "org/t", "--results", str(RESULTS)], capsys)
    assert status == 0 and stdout.startswith("## Faster generation with hf_cascade")


def test_card_recommends_the_method_of_a_given_config(tmp_path):
    text = model_card_section(RESULTS, "org/t", cascade_config=hf_cascade.CascadeConfig())
    assert "**cascade (max-gram)** (recommended)" in text and "**1.55x**" in text
    assert "assistant_models=[]" in text and "Max-Gram drafter alone" in text
    with pytest.raises(ValueError, match="No cascade method .* measured with the given cascade config"):
        model_card_section(RESULTS, "org/t", cascade_config=hf_cascade.CascadeConfig(lenience=9.0))


def test_card_says_plainly_when_the_cascade_is_slower():
    results = json.loads(RESULTS.read_text())
    slower = {"cascade (small, tiny)": 0.96, "cascade (max-gram)": 0.9}
    for row in results["summary"]:
        if row["category"] == "all" and row["method"] in slower:
            row["speedup"] = slower[row["method"]]
    text = model_card_section(results, "org/t")
    assert "ran at **0.96x** the speed of plain greedy decoding" in text
    assert "on this hardware the cascade did not pay off" in text and "as fast as" not in text


def _results(**changes):
    results = json.loads(RESULTS.read_text())
    results.update(changes)
    return results


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mismatches": ["cascade (small, tiny) differs from greedy on prompt 3 from new token 17"]}, "prompt 3"),
        ({"schema": None}, "no 'schema' field"),
        ({"schema": "hf_cascade.bench/2"}, "cannot read"),
        (
            {
                "methods": [{"label": "greedy", "kind": "greedy", "drafters": [], "cascade_config": None}],
                "summary": [row for row in _results()["summary"] if row["method"] == "greedy"],
            },
            "no cascade",
        ),
    ],
)
def test_card_refuses_bad_results(changes, message):
    with pytest.raises(ValueError, match=message):
        model_card_section(_results(**changes), "org/t")


def _with_row_field(index, field, value):
    results = _results()
    results["summary"][index][field] = value
    return results


@pytest.mark.parametrize(
    "results, message",
    [
        (_results(summary=[1, 2]), r"results: summary\[0\] is a JSON int, not an object"),
        (_results(settings=None), r"results: field 'settings' must be an object, got null"),
        (_results(methods={"a": 1}), r"field 'methods' must be a list"),
        (_results(mismatches="none"), r"field 'mismatches' must be a list"),
        (_with_row_field(4, "speedup", float("nan")), r"summary\[4\]: field 'speedup' is nan; it must be a finite"),
        (_with_row_field(4, "speedup", -1.5), r"summary\[4\]: field 'speedup' is -1.5"),
        (_with_row_field(4, "speedup", 0), r"field 'speedup' is 0; it must be a finite number > 0 or null"),
        (_with_row_field(4, "speedup", "2x"), r"field 'speedup' is '2x'"),
        (_with_row_field(2, "identical", None), r"summary\[2\]: field 'identical' is None; it must be true or false"),
        (_with_row_field(4, "acceptance", {"assistant_0": 7}), r"field 'acceptance'"),
        (_with_row_field(4, "method", "ghost"), r"method 'ghost', which 'methods' does not list"),
        (_results(methods=[{"label": "greedy"}]), r"methods\[0\]: field 'kind' must be a non-empty string"),
    ],
)
def test_card_validates_every_field_it_uses(results, message):
    """Malformed results are refused naming the field (never a traceback, never "nanx" or a negative speedup)."""
    with pytest.raises(hf_cascade.CascadeValueError, match=message):
        model_card_section(results, "org/t")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"schema": "hf_cascade.bench/1", "machine": {}, "settings": {}, "methods": [], "summary": [[]]}', "summary"),
        (json.dumps(_results(settings=None)), "'settings' must be an object"),
        (json.dumps(_with_row_field(4, "speedup", float("nan"))), "'speedup' is nan"),
        (json.dumps(_with_row_field(4, "speedup", -2.0)), "'speedup' is -2.0"),
    ],
)
def test_card_cli_names_the_file_and_field_of_malformed_results(tmp_path, capsys, content, message):
    path = tmp_path / "results.json"
    path.write_text(content)
    status, stdout, err = run_cli(["card", "--target", "org/t", "--results", str(path)], capsys)
    assert status == 2 and str(path) in err and message in err and stdout == "" and "Traceback" not in err


def test_card_cli_out_into_a_missing_folder(tmp_path, capsys):
    out = tmp_path / "missing" / "card.md"
    status, _, err = run_cli(["card", "--target", "org/t", "--results", str(RESULTS), "--out", str(out)], capsys)
    assert status == 2 and "does not exist" in err and str(tmp_path / "missing") in err
    status, _, err = run_cli(["card", "--target", "org/t", "--results", str(RESULTS), "--out", str(tmp_path)], capsys)
    assert status == 2 and "is a directory" in err


def test_card_reads_a_committed_benchmark():
    """results.json files written by earlier versions (benchmarks/results) keep loading: the schema is unchanged."""
    path = Path(__file__).parents[1] / "benchmarks" / "results" / "smollm2-cpu" / "results.json"
    text = model_card_section(path, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert text.startswith("## Faster generation with hf_cascade") and "(recommended)" in text
    assert "nanx" not in text and "-0." not in text


def test_card_refuses_a_non_identical_summary_row_and_cli_reports_it(tmp_path, capsys):
    results = _results()
    results["summary"][4]["identical"] = False
    with pytest.raises(ValueError, match="cascade \\(small, tiny\\)"):
        model_card_section(results, "org/t")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(mismatches=["greedy vs cascade: prompt 1"])))
    status, stdout, err = run_cli(["card", "--target", "org/t", "--results", str(path)], capsys)
    assert status == 2 and "differ from plain greedy" in err and stdout == ""
    path.write_text("{not json")
    status, _, err = run_cli(["card", "--target", "org/t", "--results", str(path)], capsys)
    assert status == 2 and "not valid JSON" in err
