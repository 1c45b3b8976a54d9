"""Search spaces: the ranges of a method's settings worth searching, declared beside its config.

A method's config lists them in ``search_space`` (settings by section, like a preset, but each value is a
:class:`SearchRange`); ``weightshare tune`` samples from them and a TOML file can change them
(:func:`space_from_toml`). Nothing here needs Optuna: the search stage turns a range into a distribution.

Soft weight-sharing in particular is sensitive to tau and the learning rates (Ullrich et al. 2017, Sec. 4.1
tuned 13 hyper-parameters by Bayesian optimisation), so its space has the most settings (docs/search.md#spaces).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightshare.core.errors import ConfigError
from weightshare.core.settings import apply_sections, validate

__all__ = ["SearchRange", "SearchSpace", "check_space", "space_from_toml", "space_to_dict"]


@dataclasses.dataclass(frozen=True)
class SearchRange:
    """The values one setting may take in a search: ``low..high`` (``log``: sampled on a log scale;
    ``step``: a grid, for integers) or a list of ``choices``.

    >>> SearchRange(1e-3, 1e-1, log=True).describe()
    '[0.001, 0.1] log'
    >>> SearchRange(choices=(50, 100)).describe()
    'one of 50, 100'
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ConfigError("a search range has either choices or low/high, and choices may not be empty")
            return
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ConfigError(f"a search range needs low <= high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"a log-scale search range needs low > 0, got {self.low}")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ConfigError("a search range's step must be > 0 and not on a log scale")

    def describe(self) -> str:
        """The range as a short phrase, for messages and the study's record."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        return (
            f"[{self.low:g}, {self.high:g}]"
            + (" log" if self.log else "")
            + (f" step {self.step:g}" if self.step else "")
        )

    def samples(self) -> list[Any]:
        """Values spanning the range (its ends and middle): what :func:`check_space` validates."""
        if self.choices is not None:
            return list(self.choices)
        middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return [self.low, middle, self.high]


SearchSpace = Mapping[str, Mapping[str, SearchRange]]
"""Ranges by section and setting: ``{"sws": {"tau": SearchRange(1e-2, 1e-1, log=True)}}``."""


def check_space(config: Any, space: SearchSpace, source: str) -> None:
    """Refuse a space naming a setting the recipe ``config`` does not have, or a range reaching values the setting
    does not accept (both ends and the middle are validated, so a trial never fails on a bad setting)."""
    for section_name, ranges in space.items():
        for key, rng in ranges.items():
            for value in rng.samples():
                current = _current(config, section_name, key, source)
                value = int(value) if isinstance(current, int) and not isinstance(current, bool) else value
                try:
                    validate(apply_sections(config, {section_name: {key: value}}, source, own=config.method))
                except ConfigError as exc:
                    raise ConfigError(
                        f"{source}: search range of [{section_name}] {key} {rng.describe()}: {exc}"
                    ) from None


def _current(config: Any, section_name: str, key: str, source: str) -> Any:
    """The recipe's value of one setting; an unknown section or setting is refused naming the known ones."""
    values = config.sections()
    if section_name not in values:
        raise ConfigError(f"{source}: unknown section [{section_name}]; expected one of {', '.join(values)}")
    if key not in values[section_name]:
        known = ", ".join(values[section_name])
        raise ConfigError(f"{source}: unknown setting {key!r} in [{section_name}]; known: {known}")
    return values[section_name][key]


def space_from_toml(path: str | Path, base: SearchSpace) -> dict[str, dict[str, SearchRange]]:
    """``base`` changed by a TOML file: each ``[section.setting]`` table sets a range (keys ``low``, ``high``,
    ``log``, ``step`` or ``choices``), or removes it from the search with ``search = false``.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
    ...     _ = f.write("[sws.tau]\\nlow = 0.01\\nhigh = 0.1\\nlog = true\\n[sws.lr_w]\\nsearch = false\\n")
    >>> space = space_from_toml(f.name, {"sws": {"lr_w": SearchRange(1e-4, 1e-3, log=True)}})
    >>> os.unlink(f.name)
    >>> {s: {k: r.describe() for k, r in v.items()} for s, v in space.items()}
    {'sws': {'tau': '[0.01, 0.1] log'}}
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"search space file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"search space file {path}: {exc}") from None
    space = {name: dict(ranges) for name, ranges in base.items()}
    for section_name, table in raw.items():
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ConfigError(f"search space file {path}: [{section_name}] must hold tables like [{section_name}.tau]")
        for key, spec in table.items():
            _apply_range(
                space.setdefault(section_name, {}), key, spec, f"search space file {path} [{section_name}.{key}]"
            )
    return {name: ranges for name, ranges in space.items() if ranges}


def _apply_range(ranges: dict[str, SearchRange], key: str, spec: dict[str, Any], where: str) -> None:
    allowed = {"low", "high", "log", "step", "choices", "search"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")
    if spec.get("search", True) is False:
        ranges.pop(key, None)
        return
    fields = {k: v for k, v in spec.items() if k != "search"}
    if "choices" in fields:
        fields["choices"] = tuple(fields["choices"])
    try:
        ranges[key] = SearchRange(**fields)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def space_to_dict(space: SearchSpace) -> dict[str, dict[str, dict[str, Any]]]:
    """JSON-able form of a space (for the study's record), without the unset fields."""
    return {name: {key: _range_dict(rng) for key, rng in ranges.items()} for name, ranges in space.items()}


def _range_dict(rng: SearchRange) -> dict[str, Any]:
    out = {k: v for k, v in dataclasses.asdict(rng).items() if v not in (None, False)}
    return out | ({"choices": list(rng.choices)} if rng.choices is not None else {})
