"""oneDNN-packed linear layers: make a k-token forward pass on CPU cost close to a 1-token one.

Speculative decoding pays only if the target reviews k drafted tokens in about the time of one. On CPU, PyTorch's
default fp32 `nn.Linear` runs a 1-token forward as a matrix-vector product but a 2..8-token forward as a
matrix-matrix product, and the MKL kernels it picks for such short matrices can be several times slower per row
(measured on a 2-core AMD EPYC: an 8960x1536 layer takes 3.8 ms for 1 row and 12 ms for 8 rows). oneDNN's
linear over a weight reordered once into its blocked layout takes 3.0 ms and 4.1 ms; a whole Qwen2.5-1.5B forward
over 8 tokens drops from 2.4x to 1.6x a 1-token step, and the 1-token step itself gets faster. This is the same
op `torch.compile` (inductor, CPU freezing) emits for linear layers, without compiling the model.

The packed layer computes the same product with a different summation order, so its outputs differ from
`nn.Linear`'s by float rounding (about 1e-6 relative in fp32): pack the model once and compare every method on the
packed model (as `hf-cascade bench --onednn-linear` does).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .errors import CascadeTypeError, CascadeValueError

__all__ = [
    "OneDNNLinear",
    "PackedWeightInfo",
    "count_parameters",
    "onednn_linear_available",
    "packable_linears",
    "packing_problem",
    "use_onednn_linear",
]


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN and the packed-linear ops `use_onednn_linear` needs."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (shape `(out_features, in_features)`) copied into oneDNN's blocked layout for any batch size."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


class PackedWeightInfo(NamedTuple):
    """What a `OneDNNLinear` that dropped its original weight still tells of it, as its `weight` attribute: model code
    that reads a linear layer's `weight.dtype` or `weight.shape` works; code that computes with the weight fails with
    a `TypeError` (it is no tensor) instead of computing with something else.

    Args:
        shape (`torch.Size`): `(out_features, in_features)`.
        dtype (`torch.dtype`): the weight's dtype (also the packed weight's).
        device (`torch.device`): the CPU.
    """

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


class OneDNNLinear(nn.Module):
    """Inference-only replacement of an `nn.Linear` whose weight is stored in oneDNN's blocked layout.

    Args:
        linear (`nn.Linear`): the layer to replace; its weight is reordered (copied) and not referenced afterwards.
        tied (`bool`): whether the weight is also a parameter of another module (e.g. `lm_head` tied to the input
            embeddings), so `count_parameters` does not count it twice.
        keep_weight (`bool`, *optional*, defaults to `False`): keep a reference to `linear.weight` as the plain
            attribute `weight` (not a parameter: `parameters()` and `count_parameters` are unchanged). Costs no memory
            where the original layer is kept anyway (`hf_cascade.drafter_packing`) or the weight is tied; otherwise
            `weight` is a `PackedWeightInfo` and the original is freed with its layer.

    Attributes:
        weight (`torch.Tensor` or `PackedWeightInfo`): for model code that reads a linear layer's `weight` (T5's
            feed-forward checks `wo.weight.dtype`): the original weight (`keep_weight`, or tied), else its shape,
            dtype and device. Not a parameter.
    """

    def __init__(self, linear: nn.Linear, tied: bool = False, keep_weight: bool = False):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.tied = tied
        # Plain attribute (bypasses nn.Module.__setattr__: not a parameter). Keeping an untied weight would double the
        # layer's memory, so it is described instead; not as a meta tensor, which torch silently multiplies as garbage.
        original = linear.weight
        keep = keep_weight or tied
        self.__dict__["weight"] = (
            original if keep else PackedWeightInfo(original.shape, original.dtype, original.device)
        )
        # Opaque oneDNN tensors: not parameters (no autograd, no state_dict), so hold them as plain attributes.
        self.packed_weight = _reorder(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ W.T + b` for `x` of shape `(..., in_features)`."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def packed_numel(self) -> int:
        """Elements of the packed weight and the bias: the parameters this layer multiplies per token, which
        `parameters()` does not list (read by `count_parameters` and `hf_cascade.cost.forward_parameters`)."""
        return self.in_features * self.out_features + (0 if self.bias is None else self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def count_parameters(model: nn.Module) -> int:
    """Parameter count of `model` as before packing: its parameters plus the weights and biases `OneDNNLinear`
    layers hold (a weight tied to another module's parameter counted once)."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, OneDNNLinear):
            total += module.packed_numel() - (module.in_features * module.out_features if module.tied else 0)
    return total


def packing_problem(model: nn.Module) -> str | None:
    """Why `use_onednn_linear` cannot pack `model`, or `None` when it can (no oneDNN in this build, parameters off
    CPU, mixed or unsupported linear dtypes); the message names the fix. Probes the dtype without touching the model.

    Args:
        model (`torch.nn.Module`): the model to pack.

    Returns:
        `str` or `None`.
    """
    if not onednn_linear_available():
        return (
            f"this PyTorch build ({torch.__version__}) lacks oneDNN or its packed-linear ops; use the model as it is."
        )
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        return (
            f"the model has parameters on {sorted(devices)}; oneDNN packing is for models on CPU only. Load the model "
            "with device='cpu' (and no offloading device_map), or skip the packing on GPU."
        )
    dtypes = {m.weight.dtype for m in model.modules() if type(m) is nn.Linear}
    if len(dtypes) > 1:
        return f"linear layers have mixed dtypes {sorted(map(str, dtypes))}; use one."
    dtype = dtypes.pop() if dtypes else torch.float32
    try:  # Probe before touching the model, so an unsupported dtype leaves it unchanged.
        _reorder(torch.zeros(1, 1, dtype=dtype))
    except RuntimeError as e:
        return f"dtype {dtype} is not supported by oneDNN on this CPU ({e}). Load the model with dtype=torch.float32."
    return None


def packable_linears(model: nn.Module, exclude: frozenset[int] = frozenset()) -> list[tuple[str, nn.Module, str, bool]]:
    """The layers `use_onednn_linear` replaces: every `nn.Linear` of exactly that type (subclasses such as quantized
    or LoRA layers have their own forward) whose id is not in `exclude`.

    Args:
        model (`torch.nn.Module`): the model.
        exclude (`frozenset[int]`, *optional*): `id()`s of modules to leave as they are (shared with another model).

    Returns:
        `list[tuple[str, nn.Module, str, bool]]`: `(qualified name, parent module, attribute name, tied)` per layer,
        `tied` when its weight is also a parameter of a module that stays (an `lm_head` tied to the embeddings).
    """
    # Parameters held by modules that stay (embeddings, norms): a linear weight among them is tied.
    kept = {id(p) for m in model.modules() if type(m) is not nn.Linear for p in m.parameters(recurse=False)}
    return [
        (f"{prefix}.{name}" if prefix else name, parent, name, id(child.weight) in kept)
        for prefix, parent in model.named_modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and id(child) not in exclude
    ]


def use_onednn_linear(model: nn.Module) -> int:
    """Replace every `nn.Linear` of a CPU model, in place, by a `OneDNNLinear` with a pre-packed weight.

    For inference only (no gradients), after loading and before generating; save or fine-tune the model before
    packing, not after. Layers of other types (transformers' GPT-2 `Conv1D`, quantized linears) are left as they
    are. A weight tied to the input embeddings (`lm_head`) is copied, so memory grows by that matrix.

    Args:
        model (`torch.nn.Module`): a model whose parameters are all on CPU, in float32 (or bfloat16/float16 where the
            CPU supports oneDNN's reduced-precision paths).

    Returns:
        `int`: the number of layers replaced.

    Raises:
        ValueError: the PyTorch build lacks oneDNN, the model is not on CPU, or its dtype is not supported here.
    """
    if not isinstance(model, nn.Module):
        raise CascadeTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    problem = packing_problem(model)
    if problem is not None:
        raise CascadeValueError(f"use_onednn_linear: {problem}")
    layers = packable_linears(model)
    for _, parent, name, tied in layers:
        setattr(parent, name, OneDNNLinear(getattr(parent, name), tied=tied))
    return len(layers)
