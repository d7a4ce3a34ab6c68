"""Quickstart: a target, two assistant models and Max-Gram, with identical greedy output. Runs offline in seconds.

Tiny random models stand in for real ones so this runs anywhere; with real checkpoints, load the target and its
smaller siblings (same tokenizer) with AutoModelForCausalLM.from_pretrained and pass them the same way.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_cascade


def tiny_llama(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


target = tiny_llama(layers=4, seed=0)
drafter = tiny_llama(layers=4, seed=0)  # a same-vocabulary drafter (here: a copy, so it agrees fully)
small = tiny_llama(layers=2, seed=1)  # a smaller, weaker one below it
inputs = {"input_ids": torch.tensor([[0, 5, 6, 7, 8, 9, 5, 6, 7]])}

# 1. As a custom_generate callable: stock transformers runs the cascade.
config = hf_cascade.CascadeConfig(k_matrix=[[4, 0, 2], [0, 3, 2], [0, 0, 6]], lenience=1.5)
out = target.generate(
    **inputs,
    custom_generate=hf_cascade.generate,
    assistant_models=[drafter, small],
    cascade_config=config,
    max_new_tokens=32,
    do_sample=False,
    return_dict_in_generate=True,
)
plain = target.generate(**inputs, max_new_tokens=32, do_sample=False)
assert torch.equal(out.sequences, plain), "the cascade must reproduce the target's greedy output"
print(out.cascade_stats.summary())

# 2. enable(): model.generate takes assistant_models / cascade_config directly; other calls are untouched.
hf_cascade.enable(target)
again = target.generate(**inputs, assistant_models=[drafter, small], cascade_config=config, max_new_tokens=32)
assert torch.equal(again, plain)

# 3. Target + Max-Gram only: no assistant model at all.
mag_only = target.generate(**inputs, assistant_models=[], max_new_tokens=32)
assert torch.equal(mag_only, plain)
print("identical greedy output in all three modes")
