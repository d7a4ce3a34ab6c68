"""Streaming the cascade's output: TextStreamer to stdout, TextIteratorStreamer in a thread. Runs offline in seconds.

Tokens reach the streamer as the target accepts them (often several at once). With `custom_generate=` pass the
streamer as `cascade_streamer=` (transformers does not hand `streamer=` to a callable); after
`hf_cascade.enable(model)`, or with a `custom_generate` repository (see hub_export.py), `streamer=` works.
"""

import threading

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TextIteratorStreamer, TextStreamer

import hf_cascade

VOCAB = 64


def tiny_llama(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


backend = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(VOCAB)}, unk_token="w2"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="w0", eos_token="w1", unk_token="w2")

target, assistant = tiny_llama(layers=4, seed=0), tiny_llama(layers=2, seed=1)
input_ids = tokenizer("w5 w6 w7 w8 w9 w10 w5 w6 w7", return_tensors="pt")["input_ids"]
plain = target.generate(input_ids, max_new_tokens=24, do_sample=False)
expected = tokenizer.decode(plain[0, input_ids.shape[1] :])

# 1. Print to stdout as tokens are accepted.
out = target.generate(
    input_ids,
    max_new_tokens=24,
    do_sample=False,
    custom_generate=hf_cascade.generate,
    assistant_models=[assistant],
    cascade_streamer=TextStreamer(tokenizer, skip_prompt=True),
)
assert torch.equal(out, plain)

# 2. Consume text chunks in this thread while generate runs in another (what a web server or UI does).
hf_cascade.enable(target)
streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
thread = threading.Thread(
    target=target.generate,
    kwargs=dict(
        input_ids=input_ids, max_new_tokens=24, do_sample=False, assistant_models=[assistant], streamer=streamer
    ),
)
thread.start()
chunks = list(streamer)  # ends when the cascade calls streamer.end()
thread.join()
hf_cascade.disable(target)
assert "".join(chunks).split() == expected.split()
print(f"streamed {len(chunks)} chunks, identical to plain greedy")
