"""Hub usage: the exported custom_generate repository, CascadeConfig.push_to_hub/from_pretrained, and the model card.

Nothing touches the network: repositories are local folders and uploads are captured by patching `HfApi`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModelForCausalLM

import hf_cascade
from hf_cascade import cli
from hf_cascade.card import model_card_section
from hf_cascade.hub import export_hub, requirements

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
    assert names == [
        "README.md",
        "cascade_config.json",
        "custom_generate/generate.py",
        "custom_generate/requirements.txt",
    ]
    reqs = Path(repo, "custom_generate", "requirements.txt").read_text().split()
    assert reqs == requirements() and reqs[0] == f"hf_cascade>={hf_cascade.__version__},<0.2"
    assert reqs[1].startswith("transformers>=5")  # the lower bound first: transformers checks the first bound
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
    assert hf_cascade.CascadeConfig.from_pretrained(repo) == hf_cascade.CascadeConfig(lenience=2.0)
    # The generate.py is a shim over the installed package, not a copy of the engine.
    assert "from hf_cascade.hub import hub_generate" in Path(repo, "custom_generate", "generate.py").read_text()


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
    assert isinstance(out, hf_cascade.CascadeDecoderOnlyOutput)
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
    assert isinstance(out, hf_cascade.CascadeDecoderOnlyOutput)
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
    assert status == 2 and "--force" in err and "README.md" in err  # never overwrites silently
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    status, _, err = run_cli(["export-hub", str(out), "--cascade-config", str(tmp_path / "nope")], capsys)
    assert status == 2 and "does not exist" in err


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
        ({"methods": [{"label": "greedy", "kind": "greedy", "drafters": [], "cascade_config": None}]}, "no cascade"),
    ],
)
def test_card_refuses_bad_results(changes, message):
    with pytest.raises(ValueError, match=message):
        model_card_section(_results(**changes), "org/t")


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
