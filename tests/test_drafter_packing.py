"""Drafters on oneDNN-packed copies during a call (`CascadeConfig.pack_drafters`, `hf_cascade.drafter_packing`):
greedy identity, the user's modules back after the call (also on error), copies kept and refreshed, deepcopy and
pickling unaffected, what is never packed, errors."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList

import hf_cascade
from hf_cascade import cpu
from hf_cascade.cpu import OneDNNLinear
from hf_cascade.drafter_packing import PACKED_ATTR

from conftest import build, llama_config, perturbed

pytestmark = pytest.mark.skipif(not cpu.onednn_linear_available(), reason="this torch build lacks oneDNN linear ops")

GREEDY = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)


def tiny(seed: int = 0, dtype=torch.float32, **overrides):
    """A float32 tiny Llama (oneDNN packs float32 on every x86 CPU)."""
    return build(LlamaForCausalLM, llama_config(**overrides), seed=seed, dtype=dtype, logit_scale=8.0)


def linears(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def cascade(target, drafters, prompt, **config):
    return target.generate(
        prompt,
        custom_generate=hf_cascade.generate,
        assistant_models=drafters,
        cascade_config=hf_cascade.CascadeConfig(**config),
        return_dict_in_generate=True,
        **GREEDY,
    )


@pytest.fixture
def pair():
    target = tiny(seed=0)
    return target, perturbed(target, 0.2, seed=1)


def test_greedy_identical_and_drafter_restored(pair, prompt):
    target, drafter = pair
    own = linears(drafter)
    reference = target.generate(prompt, **GREEDY)
    out = cascade(target, [drafter], prompt)
    assert out.sequences.tolist() == reference.tolist()
    level = out.cascade_stats.levels[1]
    assert (level.packing, level.packed_layers) == ("packed", len(own))
    assert level.packing_s > 0 and level.forward_passes > 0
    assert f"assistant_0: ran on oneDNN-packed copies of {len(own)} linear layers (pack_drafters; packed in" in (
        out.cascade_stats.summary()
    )
    # The drafter is the user's model again: the same nn.Linear objects, nothing packed in its module tree.
    assert linears(drafter) == own
    assert not any(isinstance(m, OneDNNLinear) for m in drafter.modules())
    assert out.cascade_stats.target.packing is None and out.cascade_stats.levels[-1].packing is None


def test_copies_kept_across_calls_and_refreshed_after_a_weight_change(pair, prompt):
    target, drafter = pair
    cascade(target, [drafter], prompt)
    kept = {name: packed for name, (_, packed) in drafter.__dict__[PACKED_ATTR].layers.items()}
    first = cascade(target, [drafter], prompt).cascade_stats
    second = first.levels[1]
    assert (second.packing, second.packing_s) == ("packed", 0.0)  # nothing packed again
    assert (
        "assistant_0: ran on oneDNN-packed copies of 15 linear layers (pack_drafters; kept from an earlier call)"
        in (first.summary())
    )
    assert {name: packed for name, (_, packed) in drafter.__dict__[PACKED_ATTR].layers.items()} == kept
    with torch.no_grad():
        drafter.model.layers[0].mlp.down_proj.weight.mul_(1.5)  # in place: the weight's version changes
    cascade(target, [drafter], prompt)
    now = drafter.__dict__[PACKED_ATTR].layers
    changed = [name for name, (_, packed) in now.items() if packed is not kept[name]]
    assert changed == ["model.layers.0.mlp.down_proj"]


def test_pack_drafter_ahead_and_forget(pair, prompt):
    target, drafter = pair
    assert hf_cascade.pack_drafter(drafter) == len(linears(drafter))
    assert hf_cascade.pack_drafter(drafter) == 0  # kept
    assert cascade(target, [drafter], prompt).cascade_stats.levels[1].packing == "packed"
    hf_cascade.forget_packed_drafter(drafter)
    assert PACKED_ATTR not in drafter.__dict__
    assert hf_cascade.pack_drafter(drafter) == len(linears(drafter))


def test_deepcopy_and_pickle_after_a_call(pair, prompt):
    target, drafter = pair
    cascade(target, [drafter], prompt)
    copied = copy.deepcopy(drafter)
    assert copied.__dict__[PACKED_ATTR].layers == {}
    restored = pickle.loads(pickle.dumps(drafter))
    assert restored.__dict__[PACKED_ATTR] == {}  # a plain dict: loads without hf_cascade's class
    for model in (copied, restored):
        torch.testing.assert_close(model(prompt).logits, drafter(prompt).logits)
        out = cascade(target, [model], prompt)
        assert out.cascade_stats.levels[1].packing == "packed"


def test_modules_restored_when_the_call_raises(pair, prompt):
    target, drafter = pair
    own = linears(drafter)

    class Boom(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        target.generate(
            prompt,
            custom_generate=hf_cascade.generate,
            assistant_models=[drafter],
            stopping_criteria=StoppingCriteriaList([Boom()]),
            **GREEDY,
        )
    assert linears(drafter) == own


def test_off_leaves_drafters_alone(pair, prompt):
    target, drafter = pair
    level = cascade(target, [drafter], prompt, pack_drafters=False).cascade_stats.levels[1]
    assert (level.packing, level.packed_layers) == ("off", 0)
    assert PACKED_ATTR not in drafter.__dict__


def test_modules_shared_with_the_target_are_not_packed(pair, prompt):
    """A drafter sharing the target's lm_head (a layer-skip drafter shares more): packing it would change the target's
    numerics, so only the drafter's own layers are packed."""
    target, drafter = pair
    drafter.lm_head = target.lm_head
    reference = target.generate(prompt, **GREEDY)
    out = cascade(target, [drafter], prompt)
    assert out.sequences.tolist() == reference.tolist()
    assert out.cascade_stats.levels[1].packed_layers == len(linears(drafter)) - 1
    assert type(target.lm_head) is torch.nn.Linear


@pytest.mark.parametrize(
    ("change", "note"),
    [
        (lambda m: setattr(m, "hf_device_map", {"": "cpu"}), "placed by accelerate"),
        (hf_cascade.use_onednn_linear, "already packed"),
        (lambda m: m.to(torch.float64), "dtype torch.float64 is not supported by oneDNN"),
    ],
)
def test_drafters_left_as_they_are(pair, prompt, change, note):
    target, drafter = pair
    change(drafter)
    level = cascade(target, [drafter], prompt).cascade_stats.levels[1]
    assert level.packed_layers == 0 and note in level.packing


def test_config_field_is_checked():
    with pytest.raises(hf_cascade.CascadeTypeError, match="CascadeConfig.pack_drafters must be a bool, got 'yes'"):
        hf_cascade.CascadeConfig(pack_drafters="yes")


def test_pack_drafter_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="pack_drafter: dtype torch.float64 is not supported by oneDNN"):
        hf_cascade.pack_drafter(tiny(dtype=torch.float64))


def test_encoder_decoder_drafter_reads_its_weight(t5, prompt):
    """T5's feed-forward reads `wo.weight.dtype`: the packed copies keep the weight as a plain attribute."""
    target = copy.deepcopy(t5).to(torch.float32)
    drafter = perturbed(target, 0.2, seed=2)
    reference = target.generate(prompt, **GREEDY)
    out = cascade(target, [drafter], prompt)
    assert out.sequences.tolist() == reference.tolist()
    assert out.cascade_stats.levels[1].packing == "packed"
    assert out.cascade_stats.levels[1].packed_layers == len(linears(drafter))
