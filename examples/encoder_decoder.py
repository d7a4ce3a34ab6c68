"""Encoder-decoder (T5-style) targets: the cascade with T5 assistants and Max-Gram. Runs offline in seconds.

Tiny random T5 models built from a config stand in for real ones (for example flan-t5-large with flan-t5-base and
flan-t5-small as assistants, loaded with AutoModelForSeq2SeqLM.from_pretrained). Max-Gram also copies from the
encoder input, which is what summarisation and rewriting repeat.
"""

import torch
from transformers import T5Config, T5ForConditionalGeneration

import hf_cascade


def tiny_t5(layers: int, seed: int) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=128,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        relative_attention_num_buckets=8,
    )
    return T5ForConditionalGeneration(config).eval()


target = tiny_t5(layers=3, seed=0)
base, small = tiny_t5(layers=2, seed=1), tiny_t5(layers=1, seed=2)  # assistants, largest first
inputs = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 1]])}

config = hf_cascade.CascadeConfig(k_matrix=[[3, 0, 2], [0, 3, 2], [0, 0, 8]], lenience=2.0)
out = target.generate(
    **inputs,
    custom_generate=hf_cascade.generate,
    assistant_models=[base, small],
    cascade_config=config,
    max_new_tokens=24,
    do_sample=False,
    return_dict_in_generate=True,
)
assert isinstance(out, hf_cascade.CascadeEncoderDecoderOutput)
assert torch.equal(out.sequences, target.generate(**inputs, max_new_tokens=24, do_sample=False))
print(out.cascade_stats.summary())
print("identical greedy output for the encoder-decoder target")
