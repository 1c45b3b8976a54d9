"""Remove structurally dead weights: non-zeros that can never change the output.

Soft weight-sharing drives whole units to zero, but only one side of a unit at a
time: on LeNet-5, 335 of the 500 ``fc1`` units lose every incoming weight while
``fc2`` still holds 391 non-zero weights reading them. Such weights inflate the
non-zero count (and the compressed size) without affecting the function, so the
cleanup below removes them, applying two exact rules to pairs of layers ``A -> B``
until nothing changes (one removal can expose another, in either direction):

1. *unread outputs*: if no non-zero weight of ``B`` reads unit ``j`` of ``A``, the
   incoming weights of ``j`` are dead (its bias stays; nothing reads it either).
2. *constant inputs*: if unit ``j`` of ``A`` has no non-zero incoming weight, it
   carries the constant ``f(bias_j)`` (``f`` = ReLU if the chain has one), so the
   weights of ``B`` reading it add a constant: zero them, folding that constant
   into ``B``'s bias when it is not zero.

Only pairs whose data flow is certain are touched: ``A`` and ``B`` are ``nn.Linear``
or ``nn.Conv2d`` modules called once, and ``A``'s output reaches ``B`` only,
through single-user ReLU / max-pooling / flatten ops (found with ``torch.fx``).
Anything else (residual adds, normalisation, a second reader) ends the chain, and
those weights are kept.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from weightshare.core.quantized import QuantizedModel

__all__ = ["remove_dead_weights"]

_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class _Pair:
    """``A``'s output feeds only ``B``; unit ``j`` of ``A`` is read by ``B``'s input
    columns ``j*group ... (j+1)*group - 1`` (``group`` = H*W after a flatten, else 1)."""

    a: str
    b: str
    units: int
    group: int
    relu: bool
    a_has_bias: bool
    # A constant input can enter B's bias only if every output of B sees it through
    # all of its taps: always for Linear, for Conv2d only without padding.
    can_fold: bool


def _arg(node: fx.Node, pos: int, name: str, default: object) -> object:
    """An argument of a traced call, positional or keyword."""
    return node.args[pos] if len(node.args) > pos else node.kwargs.get(name, default)


def _chain_op(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"relu"``, ``"pool"`` or ``"flatten"`` for an op that keeps channel ``j`` in
    place (flatten only from dim 1), ``None`` for anything the analysis does not know."""
    if node.op == "call_module":  # by type: a module's name says nothing about what it does
        module = modules[node.target]
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, nn.MaxPool2d) and not module.return_indices:
            return "pool"
        flat = isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1)
        return "flatten" if flat else None
    if node.op not in ("call_function", "call_method"):
        return None
    if node.target in (torch.relu, F.relu, "relu"):
        return "relu"
    if node.target is F.max_pool2d and not _arg(node, 6, "return_indices", False):
        return "pool"
    dims = (_arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))  # the default start is 0
    return "flatten" if node.target in (torch.flatten, "flatten") and dims == (1, -1) else None


def _single_use_layers(gm: fx.GraphModule) -> set[str]:
    """Linear/Conv2d modules called exactly once whose parameters nothing else touches:
    a second call, a tied weight or a direct ``get_attr`` would read the same weights
    through a path the pair analysis does not see."""
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    attrs = {n.target.rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
    owners = Counter(id(p) for _, p in gm.named_parameters(remove_duplicate=False))
    return {
        name
        for name, m in gm.named_modules()
        if isinstance(m, _LAYERS)
        and calls[name] == 1
        and name not in attrs
        and all(owners[id(p)] == 1 for p in m.parameters(recurse=False))
    }


def _make_pair(
    a_node: fx.Node, b_node: fx.Node, chain: list[tuple[str, fx.Node]], modules: dict[str, nn.Module]
) -> _Pair | None:
    """The column mapping of ``A -> chain -> B``, or ``None`` if it is not one of the known cases."""
    a, b = modules[a_node.target], modules[b_node.target]
    ops = [op for op, _ in chain]
    flats = [node for op, node in chain if op == "flatten"]
    # Pooling only makes sense on A's feature maps, i.e. a Conv2d output not yet flattened.
    if len(flats) > 1 or ("pool" in ops and not isinstance(a, nn.Conv2d)):
        return None
    if flats and "pool" in ops[ops.index("flatten") :]:
        return None
    units = a.out_channels if isinstance(a, nn.Conv2d) else a.out_features
    group, can_fold = 1, True
    if isinstance(b, nn.Conv2d):
        if not isinstance(a, nn.Conv2d) or flats or b.groups != 1 or b.in_channels != units:
            return None
        can_fold = b.padding == "valid" or all(p == 0 for p in b.padding)
    elif isinstance(a, nn.Conv2d):
        if not flats:  # a Linear on feature maps acts on the last axis, not on channels
            return None
        shape = flats[0].args[0].meta["tensor_meta"].shape
        if len(shape) != 4 or shape[1] != units:
            return None
        group = shape[2] * shape[3]  # flattening N×C×H×W puts channel j in columns j*H*W ... (j+1)*H*W - 1
    elif flats and len(a_node.meta["tensor_meta"].shape) != 2:
        return None  # flattening more than A's unit axis would interleave the units
    if isinstance(b, nn.Linear) and b.in_features != units * group:
        return None
    return _Pair(a_node.target, b_node.target, units, group, "relu" in ops, a.bias is not None, can_fold)


def _follow(start: fx.Node, modules: dict[str, nn.Module], layers: set[str]) -> _Pair | None:
    """Walk from layer ``A`` through single-user chain ops to the layer ``B`` that reads it."""
    node, chain = start, []
    while len(node.users) == 1:
        (user,) = node.users
        if not user.args or user.args[0] is not node:
            return None
        if user.op == "call_module" and user.target in layers:
            one_input = len(user.args) == 1 and not user.kwargs
            return _make_pair(start, user, chain, modules) if one_input else None
        op = _chain_op(user, modules)
        if op is None:
            return None
        chain.append((op, user))
        node = user
    return None


def _find_pairs(model: nn.Module, example_input: torch.Tensor) -> list[_Pair]:
    """Every ``A -> B`` pair of ``model`` the rules may touch (raises if tracing fails)."""
    # Shape propagation runs the model: a copy in eval mode keeps the caller's module
    # (training flag, BatchNorm statistics) untouched.
    gm = fx.symbolic_trace(copy.deepcopy(model)).eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    modules = dict(gm.named_modules())
    layers = _single_use_layers(gm)
    pairs = [_follow(n, modules, layers) for n in gm.graph.nodes if n.op == "call_module" and n.target in layers]
    return [p for p in pairs if p is not None]


class _Weights:
    """The tensors being cleaned: float values for every name, and the indices of the
    quantized ones, always zeroed together. Fresh copies, so the input model is never written."""

    def __init__(self, qmodel: QuantizedModel) -> None:
        self.values = {name: t.contiguous() for name, t in qmodel.to_state_dict().items()}
        self.indices = {name: qt.indices.clone().contiguous() for name, qt in qmodel.quantized.items()}
        self.dense = set(qmodel.dense)

    def zero(self, name: str, units: torch.Tensor, lead: int) -> bool:
        """Zero the weights of ``units`` (axis 1 of the tensor seen as ``lead × units × rest``).
        Returns whether anything was zeroed: never for a dense tensor, which stays as it is."""
        if name not in self.indices or not units.any():
            return False
        for t in (self.values[name], self.indices[name]):
            t.view(lead, units.numel(), -1)[:, units] = 0
        return True


def _fold_constants(p: _Pair, w: _Weights, const: torch.Tensor) -> bool:
    """Rule 2: ``B``'s weights reading a constant unit of ``A`` (``const``) go, their
    constant contribution moved into ``B``'s bias when it is not zero."""
    bias_a = w.values.get(f"{p.a}.bias") if p.a_has_bias else torch.zeros(p.units)
    name_b, bias_b = f"{p.b}.weight", f"{p.b}.bias"
    if bias_a is None or bias_a.shape != (p.units,) or name_b not in w.indices:
        return False
    value = bias_a.clamp_min(0) if p.relu else bias_a  # max-pooling and flatten keep a constant as it is
    wb = w.values[name_b]
    foldable = p.can_fold and bias_b in w.dense and w.values[bias_b].shape == (wb.shape[0],)
    drop = const & ((value == 0) | foldable)
    fold = drop & (value != 0)
    if fold.any():
        # Every output of B reads unit j through all its taps (H*W columns, or a whole kernel).
        taps = wb.reshape(wb.shape[0], p.units, -1)[:, fold].double().sum(2)
        w.values[bias_b] += (taps @ value[fold].double()).float()
    return w.zero(name_b, drop, wb.shape[0])


def _apply(p: _Pair, w: _Weights) -> bool:
    """One application of both rules to one pair; whether any weight was removed."""
    name_a, name_b = f"{p.a}.weight", f"{p.b}.weight"
    wa, wb = w.values.get(name_a), w.values.get(name_b)
    if wa is None or wb is None or wa.shape[0] != p.units or wb.dim() < 2 or wb.shape[1] != p.units * p.group:
        return False  # the checkpoint does not match the architecture: leave the pair alone
    read = wb.reshape(wb.shape[0], p.units, -1).ne(0).any(2).any(0)
    fed = wa.reshape(p.units, -1).ne(0).any(1)
    unread = w.zero(name_a, fed & ~read, 1)  # rule 1
    return _fold_constants(p, w, ~fed & read) | unread


def remove_dead_weights(
    model: nn.Module, qmodel: QuantizedModel, example_input: torch.Tensor
) -> tuple[QuantizedModel, dict[str, int]]:
    """Set every structurally dead weight of ``qmodel`` to index 0, without changing the function.

    ``model`` gives the architecture only (its parameter values are ignored);
    ``example_input`` is one batch, used to trace the shapes. Returns a new model (the
    input is not modified; codebooks and ``meta`` are kept, biases may absorb constants)
    and ``{name: weights removed}`` for every quantized tensor, 0 where none was. A model
    that ``torch.fx`` cannot trace comes back unchanged, with a warning.

    >>> from weightshare.core.quantized import QuantizedTensor
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> w0 = torch.tensor([[1, 2, 0], [2, 2, 1], [0, 0, 0], [1, 0, 0]])  # unit 2: no input
    >>> w2 = torch.tensor([[2, 0, 1, 1], [1, 0, 2, 0]])  # unit 1: never read
    >>> q = QuantizedModel([torch.tensor([0.0, -0.5, 0.5])],
    ...                    {"0.weight": QuantizedTensor(w0), "2.weight": QuantizedTensor(w2)},
    ...                    {"0.bias": torch.tensor([0.0, 0.0, 0.5, 0.0]), "2.bias": torch.zeros(2)})
    >>> cleaned, removed = remove_dead_weights(net, q, torch.zeros(1, 3))
    >>> removed
    {'0.weight': 3, '2.weight': 2}
    >>> cleaned.quantized["2.weight"].indices.tolist(), cleaned.dense["2.bias"].tolist()
    ([[2, 0, 0, 1], [1, 0, 0, 0]], [-0.25, 0.25])
    """
    try:
        pairs = _find_pairs(model, example_input)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, shape errors ...)
        warnings.warn(f"cannot trace {type(model).__name__} ({exc}); no dead weight removed", stacklevel=2)
        pairs = []
    weights = _Weights(qmodel)
    # A removal can expose another one pair away, in either direction; each round
    # lowers the number of non-zeros or stops, so this reaches the fixed point.
    while any([_apply(p, weights) for p in pairs]):  # a list: every pair, every round
        pass
    cleaned = QuantizedModel.from_trusted(
        [cb.clone() for cb in qmodel.codebooks],
        {name: dataclasses.replace(qt, indices=weights.indices[name]) for name, qt in qmodel.quantized.items()},
        {name: weights.values[name] for name in qmodel.dense},
        copy.deepcopy(qmodel.meta),
        qmodel.aliases,
    )
    removed = {name: qt.nnz - cleaned.quantized[name].nnz for name, qt in qmodel.quantized.items()}
    return cleaned, removed
