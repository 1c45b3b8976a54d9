"""Which tensors a method compresses: one rule shared by every method (docs/methods.md#pipeline-coverage).

By default the weights of ``nn.Linear``, ``nn.Conv1d/2d/3d`` and ``nn.Embedding`` are
covered, and the projection weights of ``nn.MultiheadAttention`` (``in_proj_weight``, or
``q/k/v_proj_weight`` when the key and value sizes differ; ``out_proj`` is an ``nn.Linear``);
biases stay dense (they keep training). ``include_biases`` adds the biases of those layers (as
the soft weight-sharing tutorial does); ``pattern`` (a regular expression on the parameter name,
``re.search``) or ``module_types`` select tensors of any ``nn.Module``; ``exclude`` (a regular
expression) takes tensors out again; ``skip_last`` leaves the last covered layer dense.

A parameter reachable under several names (an embedding tied to the output layer) is covered
once, under the name ``named_parameters()`` gives it (its first name), whichever of its names the
rule selected. A request that cannot be honoured (a buffer or a non-float tensor, a module of a
requested type without weights, a shared tensor covered under one name and excluded under another)
raises :class:`CoverageError` naming the module and the tensor: nothing is skipped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from torch import nn

from weightshare.core.errors import CoverageError

__all__ = ["Coverage", "CoverageRule", "covered_parameters", "CoverageError", "DEFAULT_TYPES", "shared_names"]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.MultiheadAttention,
)

# The weight and bias parameters of a covered module, by type; every other type: "weight" and "bias".
# nn.MultiheadAttention keeps its input projection as bare parameters (its out_proj is an nn.Linear child).
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_ATTENTION_BIASES = ("in_proj_bias",)

COVERED = "covered"


@dataclass
class Coverage:
    """What a rule selected in one model: the covered parameters, and why every state-dict entry
    is covered or stays dense (``reasons``), with ``aliases``: second names of shared tensors."""

    covered: dict[str, nn.Parameter]
    reasons: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def dense(self) -> list[str]:
        """State-dict entries that stay dense (shared names of covered tensors excluded)."""
        return [n for n, why in self.reasons.items() if why != COVERED and n not in self.aliases]


def shared_names(model: nn.Module) -> dict[str, str]:
    """``second name -> first name`` of every parameter or buffer reachable under several names.

    >>> net = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    >>> net[1].weight = net[0].weight
    >>> shared_names(net)
    {'1.weight': '0.weight'}
    """
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in _named_tensors(model):
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin) or tensor.numel() == 0:
            continue  # empty tensors share no data (and may share a null pointer); lazy ones have none yet
        owner = first.setdefault(id(tensor), name)
        if owner != name:
            aliases[name] = owner
    return aliases


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, object]]:
    """Every parameter and buffer under every name, in ``state_dict`` order (module by module)."""
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for pname, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
                yield prefix + pname, tensor


@dataclass(frozen=True)
class CoverageRule:
    """The settings of the coverage rule; :meth:`select` applies them to a model.

    >>> net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3), nn.LayerNorm(3))
    >>> cov = CoverageRule(exclude="^0").select(net)
    >>> list(cov.covered), cov.reasons["0.weight"], cov.reasons["2.weight"]
    (['1.weight'], "matches the exclude pattern '^0'", 'LayerNorm is not a covered module type')
    """

    include_biases: bool = False
    pattern: str | None = None
    module_types: Sequence[type[nn.Module]] | None = None  # None: DEFAULT_TYPES
    skip_last: bool = False
    exclude: str | None = None

    def select(self, model: nn.Module) -> Coverage:
        """The covered parameters of ``model`` (first names, rule order) and a reason for every entry."""
        aliases = shared_names(model)
        reasons: dict[str, str] = {}
        groups = self._groups(model, reasons)
        if self.exclude:
            groups = self._apply_exclude(groups, reasons)
        if self.skip_last and groups:
            for name, _ in groups.pop():
                reasons[name] = "the last covered layer, left dense (skip_last)"
        chosen = {name for group in groups for name, _ in group}
        covered: dict[str, nn.Parameter] = {}
        for group in groups:
            for name, param in group:
                first = aliases.get(name, name)
                _check_all_names_agree(first, name, aliases, reasons, chosen)
                covered.setdefault(first, param)
        if not covered:
            raise CoverageError(
                f"the coverage rule ({self._describe()}) matches no parameter of {type(model).__name__}"
            )
        return Coverage(covered, _every_entry(model, reasons, covered, aliases), aliases)

    def _describe(self) -> str:
        if self.pattern:
            return f"pattern {self.pattern!r}"
        return f"module types {[t.__name__ for t in self._types()]}"

    def _types(self) -> tuple[type[nn.Module], ...]:
        return DEFAULT_TYPES if self.module_types is None else tuple(self.module_types)

    def _groups(self, model: nn.Module, reasons: dict[str, str]) -> list[list[tuple[str, nn.Parameter]]]:
        """Per module (in ``named_modules`` order), the parameters the rule selects from it."""
        regex = _compile(self.pattern) if self.pattern else None
        groups = []
        for module_name, module in model.named_modules(remove_duplicate=False):
            prefix = f"{module_name}." if module_name else ""
            if regex is not None:
                group = _by_pattern(module_name, module, prefix, regex, reasons)
            else:
                group = self._by_type(module_name, module, prefix, reasons)
            for name, param in group:
                _check_coverable(module_name, module, name, param)
            if group:
                groups.append(group)
        return groups

    def _by_type(
        self, module_name: str, module: nn.Module, prefix: str, reasons: dict[str, str]
    ) -> list[tuple[str, nn.Parameter]]:
        own = [(pname, p) for pname, p in module._parameters.items() if p is not None]
        if not isinstance(module, self._types()):
            for pname, _ in own:
                reasons.setdefault(prefix + pname, f"{type(module).__name__} is not a covered module type")
            return []
        is_attention = isinstance(module, nn.MultiheadAttention)
        weights = _ATTENTION_WEIGHTS if is_attention else ("weight",)
        biases = _ATTENTION_BIASES if is_attention else ("bias",)
        if not any(pname in weights for pname, _ in own):
            where = f"module {module_name!r}" if module_name else "the model"
            raise CoverageError(
                f"{where} ({type(module).__name__}) is of a covered type but has no weight parameter "
                f"({' or '.join(weights)}) to cover; leave its type out or select tensors with a pattern"
            )
        group = []
        for pname, p in own:
            if pname in weights or (self.include_biases and pname in biases):
                group.append((prefix + pname, p))
            elif pname in biases:
                reasons.setdefault(prefix + pname, "bias of a covered layer (include_biases is off)")
            else:
                reasons.setdefault(prefix + pname, f"not a weight of {type(module).__name__}")
        return group

    def _apply_exclude(
        self, groups: list[list[tuple[str, nn.Parameter]]], reasons: dict[str, str]
    ) -> list[list[tuple[str, nn.Parameter]]]:
        regex = _compile(str(self.exclude))
        kept = []
        for group in groups:
            for name, _ in group:
                if regex.search(name):
                    reasons[name] = f"matches the exclude pattern {self.exclude!r}"
            rest = [(n, p) for n, p in group if not regex.search(n)]
            if rest:
                kept.append(rest)
        return kept


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise CoverageError(f"{pattern!r} is not a regular expression: {exc}") from None


def _by_pattern(
    module_name: str, module: nn.Module, prefix: str, regex: re.Pattern[str], reasons: dict[str, str]
) -> list[tuple[str, nn.Parameter]]:
    for bname, buffer in module._buffers.items():
        if buffer is not None and regex.search(prefix + bname):
            raise CoverageError(
                f"pattern {regex.pattern!r} matches buffer {prefix + bname!r} of module {module_name!r} "
                f"({type(module).__name__}): only parameters can be covered; narrow the pattern"
            )
    group = []
    for pname, p in module._parameters.items():
        if p is None:
            continue
        if regex.search(prefix + pname):
            group.append((prefix + pname, p))
        else:
            reasons.setdefault(prefix + pname, f"does not match the pattern {regex.pattern!r}")
    return group


def _check_coverable(module_name: str, module: nn.Module, name: str, param: nn.Parameter) -> None:
    what = f"{name!r} of module {module_name!r} ({type(module).__name__})"
    if isinstance(param, nn.parameter.UninitializedParameter):
        raise CoverageError(f"{what} is not initialised yet: run one forward pass before compressing")
    if not param.dtype.is_floating_point:
        raise CoverageError(f"{what} is {param.dtype}: only floating-point tensors can be covered")


def _check_all_names_agree(
    first: str, name: str, aliases: dict[str, str], reasons: dict[str, str], chosen: set[str]
) -> None:
    """A shared tensor is one tensor: refused when one of its names is covered and another excluded."""
    names = [first, *(a for a, f in aliases.items() if f == first)]
    for other in names:
        if other != name and other not in chosen and reasons.get(other, "").startswith(("matches", "the last")):
            raise CoverageError(
                f"{name!r} and {other!r} are the same tensor, covered as {name!r} but {reasons[other]} as "
                f"{other!r}; exclude both names or neither"
            )


def _every_entry(
    model: nn.Module, reasons: dict[str, str], covered: dict[str, nn.Parameter], aliases: dict[str, str]
) -> dict[str, str]:
    """A reason for every state-dict entry, in state-dict order."""
    out = {}
    for name in model.state_dict(keep_vars=True):
        first = aliases.get(name, name)
        if name in covered:
            out[name] = COVERED
        elif first in covered:
            out[name] = f"the same tensor as {first!r}, covered once under that name"
        elif name in aliases:
            out[name] = f"the same tensor as {first!r}, stored once under that name"
        else:
            out[name] = reasons.get(name, "buffer: stored exactly as it is")
    return out


def covered_parameters(
    model: nn.Module,
    include_biases: bool = False,
    pattern: str | None = None,
    module_types: Sequence[type[nn.Module]] | None = None,
    skip_last: bool = False,
    exclude: str | None = None,
) -> dict[str, nn.Parameter]:
    """Ordered ``name -> parameter`` of the tensors a method compresses (see :class:`CoverageRule`).

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(covered_parameters(net))
    ['0.weight', '2.weight']
    >>> list(covered_parameters(net, include_biases=True, skip_last=True))
    ['0.weight', '0.bias']
    """
    return CoverageRule(include_biases, pattern, module_types, skip_last, exclude).select(model).covered
