"""Prompt sets for benchmarks: the sets shipped with hf_cascade and readers for public datasets on local disk.

Shipped sets (written for this project, not copied from datasets), 18 prompts each:

- `grounded`: rewrite, proofread, summarise, extract and reformat a given passage, and code edits: answers that
  reuse the input, where copying drafters (Max-Gram, prompt lookup) shine.
- `math`: GSM8K-style word problems written for this project, with their answers.
- `chat`: open-ended requests with nothing to copy from: where drafts mostly fail and overhead shows.

Sets that repeat *across* calls (`REPEATING_SETS`, for `MaxGramMemory` and SuffixDecoding's global tree; run in
order, one call per prompt; not part of the default benchmark):

- `extraction`: 20 short texts about an employee, each extracted into the same JSON record (keys named in words).
- `code-edits`: 16 small Python functions, each given the same edit (type hints and a Google-style docstring).
- `chat-followup`: 10 two-turn conversations: a request, then a second turn about the first answer (quote it,
  summarise it, correct it, reformat it), sent with the model's own first answer in the chat history.

Public datasets are read from local files (nothing is downloaded): `gsm8k` (the JSONL test split, `{"question",
"answer"}`), `mt-bench` (FastChat's `question.jsonl`; first turns, with MT-Bench's categories as Spec-Bench uses
them), `humaneval` (`HumanEval.jsonl[.gz]`) and `mmlu` (the original `*_test.csv` files or a directory of them, or
JSONL `{"question", "choices", "answer", "subject"}`).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..errors import CascadeValueError

__all__ = [
    "BUILTIN_SETS",
    "DATASETS",
    "REPEATING_SETS",
    "Prompt",
    "load_builtin",
    "load_dataset_file",
    "load_jsonl",
    "sample",
]

BUILTIN_SETS = ("grounded", "math", "chat")  # the default benchmark
REPEATING_SETS = ("extraction", "code-edits", "chat-followup")
DATASETS = ("gsm8k", "mt-bench", "humaneval", "mmlu")

# The prompt formats of the CS Drafting reference experiments (see docs/benchmarks.md).
GSM8K_FORMAT = "Reason the math question below step by step. Question: {question} Answer:"
MMLU_FORMAT = "Question: {question}\n{choices}\nAnswer: Let's think step by step."
HUMANEVAL_FORMAT = "Complete the following Python function. Reply with the whole function.\n\n{prompt}"


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt.

    Args:
        id (`str`): unique within a benchmark.
        category (`str`): what results are grouped by (`"grounded"`, `"math"`, an MT-Bench category, ...).
        text (`str`): the (first) user message (wrapped in the chat template unless the benchmark is run without
            one).
        reference (`str`, *optional*): the expected final answer, where the source has one (not used for timing).
        followups (`tuple[str, ...]`): later user messages of a multi-turn conversation: each is sent with the chat so
            far (the earlier user messages and the model's own answers to them) as its history.
    """

    id: str
    category: str
    text: str
    reference: str | None = None
    followups: tuple[str, ...] = ()

    @property
    def turns(self) -> tuple[str, ...]:
        """The user messages in order: `text`, then the `followups`."""
        return (self.text, *self.followups)


def _parse_record(record: Any, where: str) -> Prompt:
    if not isinstance(record, dict):
        raise CascadeValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("id", "category", "prompt") if key not in record]
    if missing:
        raise CascadeValueError(f"{where}: missing key(s) {missing}; each line needs 'id', 'category' and 'prompt'")
    turns = record["prompt"]
    if isinstance(turns, str):
        turns = [turns]
    if not isinstance(turns, list) or not turns or not all(isinstance(turn, str) and turn.strip() for turn in turns):
        raise CascadeValueError(
            f"{where}: 'prompt' must be a non-empty string, or a non-empty list of them (the user turns of a "
            f"conversation), got {record['prompt']!r}"
        )
    answer = record.get("answer")
    return Prompt(
        str(record["id"]),
        str(record["category"]),
        turns[0],
        None if answer is None else str(answer),
        tuple(turns[1:]),
    )


def load_jsonl(path: str | os.PathLike) -> list[Prompt]:
    """Read a prompt set: one JSON object per line with `id`, `category`, `prompt` (and optionally `answer`); `prompt`
    is the user message, or a list of user messages (a conversation: each later one follows the model's own answer).

    Raises:
        `ValueError`: naming the file and line of a malformed record or a duplicate id.
    """
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CascadeValueError(f"{where}: not valid JSON ({e})") from None
            prompts.append(_parse_record(record, where))
    _check_unique(prompts, str(path))
    return prompts


def load_builtin(name: str) -> list[Prompt]:
    """One of the prompt sets shipped with hf_cascade (`BUILTIN_SETS` or `REPEATING_SETS`)."""
    if name not in BUILTIN_SETS + REPEATING_SETS:
        raise CascadeValueError(
            f"unknown built-in prompt set {name!r}; choose from {', '.join(BUILTIN_SETS + REPEATING_SETS)}"
        )
    with resources.as_file(resources.files(__package__) / "prompts" / f"{name}.jsonl") as path:
        return load_jsonl(path)


def sample(prompts: list[Prompt], n: int | None, seed: int = 0) -> list[Prompt]:
    """`n` prompts drawn without replacement with a seeded RNG, in their original order (all when `n` is `None` or
    not smaller than the set)."""
    if n is None or n >= len(prompts):
        return list(prompts)
    if n < 1:
        raise CascadeValueError(f"sample size must be >= 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return [prompts[i] for i in keep]


def _check_unique(prompts: list[Prompt], where: str) -> None:
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise CascadeValueError(f"{where}: duplicate prompt id {prompt.id!r}")
        seen.add(prompt.id)


# ------------------------------------------------------------------------------------------------ public datasets
def _read_json_lines(path: str) -> list[dict[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gsm8k(path: str) -> list[Prompt]:
    rows = _read_json_lines(path)
    prompts = []
    for i, row in enumerate(rows):
        if "question" not in row:
            raise CascadeValueError(f"{path}, record {i + 1}: not GSM8K (no 'question' key)")
        answer = str(row.get("answer", "")).rsplit("####", 1)[-1].strip() or None
        prompts.append(Prompt(f"gsm8k-{i}", "gsm8k", GSM8K_FORMAT.format(question=row["question"].strip()), answer))
    return prompts


def _mt_bench(path: str) -> list[Prompt]:
    prompts = []
    for i, row in enumerate(_read_json_lines(path)):
        if "turns" not in row or "category" not in row:
            raise CascadeValueError(f"{path}, record {i + 1}: not MT-Bench (needs 'turns' and 'category')")
        # First turns only: a second turn continues the model's own first answer, which differs between models.
        prompts.append(Prompt(f"mt-bench-{row.get('question_id', i)}", row["category"], row["turns"][0]))
    return prompts


def _humaneval(path: str) -> list[Prompt]:
    prompts = []
    for i, row in enumerate(_read_json_lines(path)):
        if "prompt" not in row:
            raise CascadeValueError(f"{path}, record {i + 1}: not HumanEval (no 'prompt' key)")
        task = str(row.get("task_id", i)).replace("/", "-").lower()
        prompts.append(Prompt(task, "humaneval", HUMANEVAL_FORMAT.format(prompt=row["prompt"])))
    return prompts


def _mmlu_prompt(question: str, choices: list[str]) -> str:
    lines = "\n".join(f"({letter}) {choice}" for letter, choice in zip("ABCDEFGH", choices, strict=False))
    return MMLU_FORMAT.format(question=question.strip(), choices=lines)


def _mmlu(path: str) -> list[Prompt]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".csv"))
        if not files:
            raise CascadeValueError(f"{path}: no MMLU *.csv files in this directory")
        return [p for f in files for p in _mmlu(f)]
    prompts = []
    if path.endswith((".jsonl", ".jsonl.gz")):
        for i, row in enumerate(_read_json_lines(path)):
            if "question" not in row or "choices" not in row:
                raise CascadeValueError(f"{path}, record {i + 1}: MMLU JSONL needs 'question' and 'choices'")
            subject = row.get("subject") or "mmlu"
            answer = row.get("answer")
            if isinstance(answer, int):
                answer = "ABCDEFGH"[answer]
            prompts.append(
                Prompt(f"mmlu-{subject}-{i}", subject, _mmlu_prompt(row["question"], row["choices"]), answer)
            )
        return prompts
    subject = os.path.basename(path).removesuffix(".csv").removesuffix("_test")
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) != 6:  # question, four choices, answer letter; the original files have no header
                raise CascadeValueError(f"{path}, row {i + 1}: an MMLU CSV row has 6 fields, got {len(row)}")
            prompts.append(Prompt(f"mmlu-{subject}-{i}", subject, _mmlu_prompt(row[0], row[1:5]), row[5]))
    return prompts


_READERS = {"gsm8k": _gsm8k, "mt-bench": _mt_bench, "humaneval": _humaneval, "mmlu": _mmlu}


def load_dataset_file(name: str, path: str | os.PathLike) -> list[Prompt]:
    """Read a public dataset from a local file (see the module docstring for the formats).

    Args:
        name (`str`): one of `DATASETS`.
        path (`str` or `os.PathLike`): the local file (or, for MMLU, a directory of CSV files).

    Raises:
        `ValueError`: for an unknown dataset or a file that is not in that dataset's format.
        `OSError`: when the file cannot be read.
    """
    if name not in _READERS:
        raise CascadeValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} data file {path} does not exist")
    try:
        prompts = _READERS[name](path)
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise CascadeValueError(f"{path} is not a readable {name} file: {e}") from None
    if not prompts:
        raise CascadeValueError(f"{path}: no {name} records found")
    return prompts
