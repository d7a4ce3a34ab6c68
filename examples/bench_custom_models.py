"""Benchmark your own models from Python: greedy vs transformers' assisted generation vs hf_cascade.

`hf-cascade bench --target ... --drafter NAME=...` does the same from the command line for anything
`from_pretrained` loads; from Python, `run_benchmark` takes models you already have in memory (here tiny random
Llamas, so it runs offline in seconds; the timings of random models mean nothing, the mechanics are the point).
"""

import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_cascade.benchmark import Method, Prompt, parse_method, run_benchmark, summarize, to_markdown, write_reports


def tiny_llama(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


target, drafter = tiny_llama(4, seed=0), tiny_llama(1, seed=1)

# Prompts as token ids (with a real tokenizer: hf_cascade.loading.encode_prompt(tokenizer, prompt.text)).
prompts = [Prompt("repeat", "grounded", "ids 5-12 twice"), Prompt("mixed", "chat", "ids 20-35")]
ids = [list(range(5, 13)) * 2, list(range(20, 36))]
encoded = [
    (p, {"input_ids": torch.tensor([x]), "attention_mask": torch.ones(1, len(x), dtype=torch.long)})
    for p, x in zip(prompts, ids, strict=True)
]

methods = [
    Method("greedy", "greedy"),  # always first: the reference for speed and output identity
    parse_method("assisted:small"),  # transformers' assisted generation with the drafter registered as "small"
    parse_method("cascade"),  # hf_cascade, Max-Gram only
    parse_method("cs=cascade:small"),  # hf_cascade: target <- small <- Max-Gram, default CascadeConfig
]
result = run_benchmark(
    target,
    encoded,
    methods,
    {"small": drafter},
    dict(max_new_tokens=24, do_sample=False, pad_token_id=0),
    repeats=2,
    settings={"target": "tiny-llama-4", "drafters": {"small": "tiny-llama-1"}, "dtype": "float32", "device": "cpu"},
)
assert not result.mismatches, result.mismatches  # every run must equal greedy's tokens

for row in summarize(result):
    if row.category == "all":
        print(f"{row.method:<10} speedup {row.speedup:.2f}x, {row.tokens_per_target_forward:.2f} tokens/target fwd")
print(to_markdown(result).splitlines()[0])
with tempfile.TemporaryDirectory() as out:
    print(write_reports(result, out, command=None, plot=False))  # results.json + report.md (plot=True needs matplotlib)
