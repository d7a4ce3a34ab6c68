"""Publishing the cascade on the Hub: a custom_generate repository and a shared cascade_config.json. Runs offline.

`hf-cascade export-hub OUT_DIR` (or `hf_cascade.hub.export_hub`) writes a repository whose `custom_generate/` holds
`generate.py` and a copy of hf_cascade's generation modules, so users need transformers alone. Here it is used from
a local folder; after `hf upload USER/REPO OUT_DIR` the same call works with `custom_generate="USER/REPO"`.
"""

import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_cascade
from hf_cascade.hub import export_hub


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


target, assistant = tiny_llama(layers=4, seed=0), tiny_llama(layers=2, seed=1)
input_ids = torch.tensor([[0, 5, 6, 7, 8, 9, 5, 6, 7]])
config = hf_cascade.CascadeConfig(k_matrix=[[4, 2], [0, 8]], lenience=2.0)

with tempfile.TemporaryDirectory() as repo:
    for path in export_hub(repo, cascade_config=config, target="org/target", assistants=["org/assistant"]):
        print("wrote", path)

    # transformers runs repo/custom_generate/generate.py (trust_remote_code=True: it is code from that folder).
    out = target.generate(
        input_ids=input_ids,
        custom_generate=repo,
        trust_remote_code=True,
        assistant_models=[assistant],
        cascade_config=config.to_dict(),  # a dict of fields: what a user without hf_cascade installed passes
        max_new_tokens=24,
        do_sample=False,
    )
    assert torch.equal(out, target.generate(input_ids, max_new_tokens=24, do_sample=False))

# Share only the configuration, for example next to a model's weights (needs a Hub token, so not run here):
#   config.push_to_hub("USER/MODEL")
#   hf_cascade.CascadeConfig.from_pretrained("USER/MODEL")
print("identical greedy output through the exported custom_generate folder")
