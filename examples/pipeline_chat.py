"""A text-generation pipeline with chat messages, through the cascade. Runs offline in seconds.

A tiny random Llama and a word-level tokenizer with a chat template stand in for real ones; with a real chat model,
build the pipeline with `pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(...),
tokenizer=AutoTokenizer.from_pretrained(...))` and load its smaller same-tokenizer siblings as assistants.
"""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, pipeline

import hf_cascade

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", ":"] + [f"w{i}" for i in range(57)]  # 64 tokens


def tiny_llama(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def word_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant : {% endif %}"
    )
    return tokenizer


target, assistant = tiny_llama(layers=4, seed=0), tiny_llama(layers=2, seed=1)
pipe = pipeline("text-generation", model=target, tokenizer=word_tokenizer())
messages = [{"role": "user", "content": "w1 w2 w3 w4 w5 w9 w1 w2 w3 w4 w5 w7 w1 w2 w3"}]
config = hf_cascade.CascadeConfig(lenience=2.0)

plain = pipe(messages, max_new_tokens=24, do_sample=False)[0]["generated_text"]

# 1. Without enable(): custom_generate and the cascade arguments travel through the pipeline's generate kwargs.
out = pipe(
    messages,
    max_new_tokens=24,
    do_sample=False,
    custom_generate=hf_cascade.generate,
    assistant_models=[assistant],
    cascade_config=config,
)
assert out[0]["generated_text"] == plain, "the cascade must reproduce the pipeline's greedy answer"

# 2. With enable(): the pipeline's model.generate takes assistant_models / cascade_config directly.
hf_cascade.enable(target)
out = pipe(messages, max_new_tokens=24, do_sample=False, assistant_models=[assistant], cascade_config=config)
hf_cascade.disable(target)
assert out[0]["generated_text"] == plain
print("assistant:", out[0]["generated_text"][-1]["content"])
print("identical chat answers through the pipeline")
