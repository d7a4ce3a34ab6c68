"""Drafters on oneDNN-packed weights while a cascade call runs (`CascadeConfig.pack_drafters`).

A drafter's numerics never change the output: the target reviews every drafted token exactly. So the cascade may run
a drafter on faster kernels than the user's: on CPU, PyTorch's default fp32 `nn.Linear` makes a 2-token forward cost
about twice a 1-token one (the short matrix-matrix products of a draft review), which caps how much a drafter can
review per second; oneDNN's kernels over a weight packed once (`hf_cascade.cpu.OneDNNLinear`) make it about flat.
Measured (Qwen2.5-Coder-0.5B as the drafter of the 1.5B on a 2-core AMD EPYC, fp32, 2 threads): 187 ms for one token
and 378 ms for two with the default kernels, 131 ms and 136 ms packed; the cascade went from 1.06x to 1.42x plain
greedy with the target on the default kernels (`benchmarks/results/qwen-coder-1.5b-0.5b-cpu-default-packed-drafter`).

How, without changing the user's model:

- During the call each packable `nn.Linear` of a drafter (`hf_cascade.cpu.packable_linears`) is swapped for its
  packed copy, and the user's own module is put back when the call returns or raises. Between calls the drafter is
  exactly the model the user loaded: same modules, parameters untouched, so `save_pretrained`, training, deepcopy,
  pickling and running the drafter alone behave as before.
- Packing copies every weight (on our CPUs about as long as loading the model: 7 s for the 0.5B drafter), so the
  packed copies are kept on the model (`PACKED_ATTR`) for later calls, each with the weight's identity and version
  it was packed from: a weight changed in place (a training step, `load_state_dict`) or replaced (`model.to(...)`)
  is packed again. The holder is not part of the model: `copy.deepcopy` gives an empty one and pickling stores a
  plain empty dict. The cost is memory: a second copy of the drafter's linear weights while kept;
  `forget_packed_drafter(model)` frees it, `pack_drafter(model)` packs ahead (at load time, so the first call does
  not pay it), and `hf_cascade.use_onednn_linear(model)` packs in place for good (no second copy, but the model's
  own layers change).

Never packed (`LevelStats.packing` says why): a drafter not entirely on CPU or placed by accelerate
(`hf_device_map`: its hooks move weights in), a build without oneDNN, a dtype oneDNN cannot pack on this CPU, and
any module the drafter shares with the target (a layer-skip drafter): packing it would change the target's numerics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .cpu import OneDNNLinear, packable_linears, packing_problem
from .errors import CascadeValueError

__all__ = [
    "PACKED_ATTR",
    "DrafterPacking",
    "forget_packed_drafter",
    "pack_drafter",
    "packed_drafters",
]

# The attribute of a drafter holding its packed copies across calls (see the module docstring).
PACKED_ATTR = "_hf_cascade_packed_linears"


class _PackedCopies:
    """A model's packed linear layers by qualified name, each with the signature of the weight it was packed from.

    Not part of the model: a deepcopy of the model starts empty, and pickling stores a plain empty `dict` (so a pickled
    model loads without hf_cascade).
    """

    def __init__(self) -> None:
        self.layers: dict[str, tuple[tuple, OneDNNLinear]] = {}

    def __deepcopy__(self, memo: dict) -> _PackedCopies:
        return _PackedCopies()

    def __reduce__(self) -> tuple:
        return (dict, ())


@dataclass
class DrafterPacking:
    """What `packed_drafters` did for one drafter.

    Args:
        layers (`int`): linear layers the call runs packed.
        packed_now (`int`): of `layers`, how many were packed for this call (the others were kept from earlier ones).
        seconds (`float`): time spent packing the `packed_now` layers (0 when none was packed now).
        note (`str`): `"packed"`, or why not (`"off"`, `"already packed"`, the reason `packing_problem` gives, ...).
    """

    layers: int = 0
    packed_now: int = 0
    seconds: float = 0.0
    note: str = "off"


def _signature(linear: nn.Linear) -> tuple:
    """What a packed copy depends on: the weight's and bias's identity, storage, version, dtype and shape."""
    return tuple(
        (id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape)) if t is not None else None
        for t in (linear.weight, linear.bias)
    )


def _problem(model: nn.Module, exclude: frozenset[int]) -> tuple[str | None, list]:
    """`(why model cannot be packed or None, its packable layers)`."""
    if getattr(model, "hf_device_map", None):
        return "placed by accelerate (device_map): its hooks move weights in", []
    problem = packing_problem(model)
    if problem is not None:
        return problem, []
    layers = packable_linears(model, exclude)
    if layers:
        return None, layers
    if any(isinstance(m, OneDNNLinear) for m in model.modules()):
        return "already packed", []
    shared = any(type(m) is nn.Linear for m in model.modules())
    return ("every linear layer is shared with the target" if shared else "no nn.Linear layers"), []


def _packed_copies(model: nn.Module, layers: list) -> tuple[list[OneDNNLinear], int]:
    """The packed copy of each of `layers` (`packable_linears` rows), from `model`'s kept copies where still valid;
    `(copies, how many were packed now)`."""
    holder = model.__dict__.get(PACKED_ATTR)
    if not isinstance(holder, _PackedCopies):
        holder = model.__dict__[PACKED_ATTR] = _PackedCopies()
    copies, packed_now = [], 0
    with torch.no_grad():
        for qualified, parent, name, tied in layers:
            linear = getattr(parent, name)
            signature = _signature(linear)
            kept = holder.layers.get(qualified)
            if kept is None or kept[0] != signature:
                kept = holder.layers[qualified] = (signature, OneDNNLinear(linear, tied=tied, keep_weight=True))
                packed_now += 1
            copies.append(kept[1])
    return copies, packed_now


def pack_drafter(model: nn.Module) -> int:
    """Pack `model`'s linear layers now and keep the copies for its cascade calls (`CascadeConfig.pack_drafters`),
    e.g. right after loading, so the first call does not spend the time; the model itself is left as it is.

    Args:
        model (`torch.nn.Module`): a drafter on CPU.

    Returns:
        `int`: layers packed now (0 when all were kept already).

    Raises:
        ValueError: the model cannot be packed (the message says why).
    """
    problem, layers = _problem(model, frozenset())
    if problem is not None:
        raise CascadeValueError(f"pack_drafter: {problem}")
    return _packed_copies(model, layers)[1]


def forget_packed_drafter(model: nn.Module) -> None:
    """Drop the packed copies kept on `model` (`pack_drafter`, earlier cascade calls), freeing their memory; the next
    call with `pack_drafters=True` packs again."""
    model.__dict__.pop(PACKED_ATTR, None)


@contextmanager
def packed_drafters(
    drafters: Sequence[nn.Module], target: nn.Module, enabled: bool = True
) -> Iterator[list[DrafterPacking]]:
    """Run `drafters` on packed copies of their linear layers inside the block; their own layers are back after it.

    Args:
        drafters (`Sequence[torch.nn.Module]`): the call's neural drafters.
        target (`torch.nn.Module`): the target; modules a drafter shares with it stay as they are.
        enabled (`bool`, *optional*, defaults to `True`): `CascadeConfig.pack_drafters`; `False` packs nothing.

    Yields:
        `list[DrafterPacking]`: one record per drafter, in order.
    """
    records = [DrafterPacking() for _ in drafters]
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        if enabled and drafters:  # Max-Gram-only calls skip the walk over the target's modules
            exclude = frozenset(id(m) for m in target.modules())
            for drafter, record in zip(drafters, records, strict=True):
                t0 = time.perf_counter()
                problem, layers = _problem(drafter, exclude)
                if problem is not None:
                    record.note = problem
                    continue
                copies, record.packed_now = _packed_copies(drafter, layers)
                for (_, parent, name, _), packed in zip(layers, copies, strict=True):
                    swapped.append((parent, name, getattr(parent, name)))
                    setattr(parent, name, packed)
                record.layers, record.note = len(layers), "packed"
                record.seconds = time.perf_counter() - t0 if record.packed_now else 0.0
        yield records
    finally:
        for parent, name, original in reversed(swapped):
            setattr(parent, name, original)
