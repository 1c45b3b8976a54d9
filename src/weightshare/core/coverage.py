"""Which tensors a method compresses: one rule shared by every method.

By default every ``nn.Linear`` / ``nn.Conv*d`` weight is covered and biases stay
dense (they keep training). ``include_biases`` adds the biases of those layers
(as the soft weight-sharing tutorial does); ``pattern`` (a regular expression on
the parameter name, ``re.search``) or ``module_types`` select tensors of any
``nn.Module``; ``skip_last`` leaves the last covered layer dense.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from weightshare.core.errors import CoverageError

__all__ = ["covered_parameters", "CoverageError"]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def covered_parameters(
    model: nn.Module,
    include_biases: bool = False,
    pattern: str | None = None,
    module_types: Sequence[type[nn.Module]] = DEFAULT_TYPES,
    skip_last: bool = False,
) -> dict[str, nn.Parameter]:
    """Ordered ``name -> parameter`` of the tensors a method compresses.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(covered_parameters(net))
    ['0.weight', '2.weight']
    >>> list(covered_parameters(net, include_biases=True, skip_last=True))
    ['0.weight', '0.bias']
    """
    regex = re.compile(pattern) if pattern else None
    groups: list[list[tuple[str, nn.Parameter]]] = []
    for module_name, module in model.named_modules():
        if regex is None and not isinstance(module, tuple(module_types)):
            continue
        group = []
        for pname, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if regex is not None:
                if regex.search(full):
                    group.append((full, param))
            elif pname == "weight" or (include_biases and pname == "bias"):
                group.append((full, param))
        if group:
            groups.append(group)
    if skip_last and groups:
        groups = groups[:-1]
    covered = {name: p for group in groups for name, p in group}
    if not covered:
        what = f"pattern {pattern!r}" if pattern else f"module types {[t.__name__ for t in module_types]}"
        raise CoverageError(f"the coverage rule ({what}) matches no parameter of {type(model).__name__}")
    return covered
