"""Configs as dataclasses: one name per knob in the API, the CLI and the config file.

A setting is a dataclass field. Its name is the Python keyword, the TOML key
(inside the section of its dataclass, e.g. ``[train] lr = 1e-3``) and, with
underscores turned into dashes, the command-line flag (``--lr``). Constraints
live in the field's metadata (:func:`setting`) and are checked by
:func:`validate` before any work starts, so a bad value fails with a message
naming the setting and what is allowed. A ``list[float]`` setting is a TOML
array and, on the command line, one comma-separated value (``--kept 0.08,0.09,0.26``);
its bounds apply to every element.

A *recipe* is a config whose fields also hold whole sections (:func:`section`):
a method's config holds its own settings (the section named after the method)
plus ``[train]``, ``[data]`` and ``[finish]``. Flags stay flat, so a name is
used by one section of a recipe only.

Resolution order: dataclass defaults < preset < config file < flags.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from weightshare.core.errors import ConfigError

__all__ = [
    "Sections",
    "setting",
    "section",
    "validate",
    "apply_overrides",
    "apply_sections",
    "to_sections",
    "add_arguments",
    "add_recipe_arguments",
    "overrides_from_args",
    "sections_from_args",
    "setting_flags",
    "load_toml",
    "read_toml",
    "to_dict",
]

Sections = Mapping[str, Mapping[str, Any]]
"""Settings by section, as in a TOML file or a preset: ``{"train": {"lr": 1e-3}, "sws": {"tau": 0.05}}``."""


def setting(
    default: Any,
    help: str = "",
    *,
    choices: Iterable[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with help text and the constraints :func:`validate` checks (on each element of a list)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, list | dict | tuple):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, *, bounds: Mapping[str, Mapping[str, float]] | None = None, **defaults: Any) -> Any:
    """A dataclass field holding a whole section of a recipe, e.g. ``train: TrainConfig = section(TrainConfig)``.

    ``defaults`` change the section's defaults for this recipe only (soft weight-sharing removes
    dead weights by default, the other methods do not); ``bounds`` add constraints for this recipe
    only, as :func:`setting` takes them (soft weight-sharing needs ``{"epochs": {"gt": 0}}``, while a
    method whose schedule needs no retraining may run zero epochs).

    >>> @dataclasses.dataclass
    ... class Inner:
    ...     lr: float = setting(1e-3, "learning rate", gt=0)
    ...     epochs: int = setting(2, "epochs", ge=0)
    >>> @dataclasses.dataclass
    ... class Recipe:
    ...     inner: Inner = section(Inner, bounds={"epochs": {"gt": 0}}, lr=0.5)
    >>> Recipe().inner
    Inner(lr=0.5, epochs=2)
    >>> validate(Recipe(inner=Inner(epochs=0)))
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'epochs' must be > 0; got 0
    """
    metadata = {"section": cls, "bounds": dict(bounds or {})}
    return dataclasses.field(default_factory=functools.partial(cls, **defaults), metadata=metadata)


# --- helpers over dataclass fields ---------------------------------------------------


def _fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    """The settings of a config: its fields that are not whole sections."""
    return [f for f in dataclasses.fields(cls_or_obj) if "section" not in f.metadata]


def _sections(cls_or_obj: Any) -> list[dataclasses.Field]:
    """The fields of a recipe that hold whole sections (:func:`section`)."""
    return [f for f in dataclasses.fields(cls_or_obj) if "section" in f.metadata]


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(type, optional) of a field annotation such as ``float``, ``str | None`` or ``list[float]``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Any": Any}, {})  # annotations are postponed strings here
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    kind, optional = _base_type(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"setting '{name}' must not be empty")
    if typing.get_origin(kind) is list:
        return _coerce_list(name, value, typing.get_args(kind)[0])
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"setting '{name}' must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"setting '{name}' must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"setting '{name}' must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"setting '{name}' must be a string, got {value!r}")
        return value
    return value


def _coerce_list(name: str, value: Any, item: type) -> list[Any]:
    """A fresh list of ``item``; a string is refused, so ``"0.1,0.2"`` is never read character by character."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"setting '{name}' must be a list, got {value!r}")
    if not value:
        raise ConfigError(f"setting '{name}' must hold at least one value")
    return [_coerce(name, v, item) for v in value]


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, list):
        for item in value:
            _check_range(name, item, meta)
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"setting '{name}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    if value is None or not isinstance(value, int | float) or isinstance(value, bool):
        return
    if not math.isfinite(value):
        raise ConfigError(f"setting '{name}' must be a finite number; got {value!r}")
    bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b)]
    bounds += [("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
    for key, symbol, ok in bounds:
        limit = meta.get(key)
        if limit is not None and not ok(value, limit):
            raise ConfigError(f"setting '{name}' must be {symbol} {limit}; got {value!r}")


def validate(config: Any, bounds: Mapping[str, Mapping[str, float]] | None = None) -> Any:
    """Check every field's type and range, section by section; then the config's own ``check()`` if it has one.

    This is the one place settings are checked: a recipe's sections are validated with it, under the
    ``bounds`` its :func:`section` adds. ``bounds`` adds constraints to ``config``'s own settings.

    >>> @dataclasses.dataclass
    ... class Example:
    ...     lr: float = setting(1e-3, "learning rate", gt=0)
    ...     kept: list[float] = setting([0.5], "kept fractions", gt=0, le=1)
    >>> validate(Example(kept=[1, 0.5])).kept
    [1.0, 0.5]
    >>> validate(Example(lr=-1.0))
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'lr' must be > 0; got -1.0
    >>> validate(Example(kept=[0.5, 1.5]))
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'kept' must be <= 1; got 1.5
    """
    for f in _sections(config):
        if not isinstance(getattr(config, f.name), f.metadata["section"]):
            raise ConfigError(f"section [{f.name}] must be a {f.metadata['section'].__name__}")
        validate(getattr(config, f.name), f.metadata.get("bounds"))
    for f in _fields(config):
        value = _coerce(f.name, getattr(config, f.name), f.type)
        setattr(config, f.name, value)
        _check_range(f.name, value, f.metadata)
        _check_range(f.name, value, (bounds or {}).get(f.name, {}))
    check = getattr(config, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as exc:  # method configs may raise plain ValueError naming the setting
            raise ConfigError(str(exc)) from exc
    return config


def apply_overrides(
    config: Any, overrides: Mapping[str, Any], source: str = "overrides", section: str | None = None
) -> Any:
    """Return a copy of ``config`` with ``overrides`` applied; unknown names are refused.

    ``section`` names the section in the message (default: the config's class, :func:`section_name`).
    Values are copied, so changing the result never changes a preset.
    """
    names = {f.name for f in _fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)} for [{section or section_name(config)}]; "
            f"known: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(config, **copy.deepcopy(dict(overrides)))


def apply_sections(config: Any, sections: Sections, source: str, own: str) -> Any:
    """A copy of recipe ``config`` with the settings of each section replaced; ``own`` names its own section.

    An unknown section or setting is refused, naming ``source`` (e.g. the config file), the section and the key.

    >>> @dataclasses.dataclass
    ... class Inner:
    ...     lr: float = setting(1e-3, "learning rate", gt=0)
    >>> @dataclasses.dataclass
    ... class Recipe:
    ...     tau: float = setting(0.1, "weight")
    ...     train: Inner = section(Inner)
    >>> apply_sections(Recipe(), {"train": {"lr": 0.5}, "m": {"tau": 1.0}}, "example", own="m")
    Recipe(tau=1.0, train=Inner(lr=0.5))
    >>> apply_sections(Recipe(), {"m": {"bogus": 1}}, "config file x.toml", own="m")
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: config file x.toml: unknown setting(s) bogus for [m]; known: tau
    """
    nested = [f.name for f in _sections(config)]
    unknown = sorted(set(sections) - {own, *nested})
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}]; expected one of {', '.join([own, *nested])}")
    changes = {name: apply_overrides(getattr(config, name), sections.get(name, {}), source, name) for name in nested}
    return apply_overrides(dataclasses.replace(config, **changes), sections.get(own, {}), source, own)


def to_sections(config: Any, own: str) -> dict[str, dict[str, Any]]:
    """A recipe as settings by section (what :func:`apply_sections` reads back), its own section first."""
    out = {own: {f.name: copy.deepcopy(getattr(config, f.name)) for f in _fields(config)}}
    return out | {f.name: dataclasses.asdict(getattr(config, f.name)) for f in _sections(config)}


def section_name(config: Any) -> str:
    """TOML section of a config dataclass: ``TrainConfig`` -> ``train``, ``SWSConfig`` -> ``sws``."""
    name = config.__name__ if isinstance(config, type) else type(config).__name__
    return name.removesuffix("Config").lower()


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# --- config files -------------------------------------------------------------------


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The tables of a TOML file; a missing or malformed file is one line naming it as ``what``."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None


def load_toml(path: str | Path, sections: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Read a TOML file whose tables are config sections (``[data]``, ``[train]``, ``[sws]``...)."""
    raw = read_toml(path)
    allowed = list(sections)
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key not in allowed or not isinstance(value, dict):
            raise ConfigError(f"config file {path}: unknown section [{key}]; expected one of {', '.join(allowed)}")
        out[key] = value
    return out


# --- command-line flags -------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    """A default as the user would type it: lists comma-separated."""
    return ",".join(f"{v:g}" for v in value) if isinstance(value, list) else repr(value)


def _is_list(f: dataclasses.Field) -> bool:
    return typing.get_origin(_base_type(f.type)[0]) is list


def _help(f: dataclasses.Field, default: Any) -> str:
    """A flag's help: the setting's text, then the list syntax and the default (unless the text gives it)."""
    text = f.metadata.get("help", "")
    notes = ["a comma-separated list"] if _is_list(f) else []
    if default is not None or "default" not in text:  # "(default: the source run's)" says it already
        notes.append(f"default {_show(default)}")
    return f"{text} ({'; '.join(notes)})" if text else "; ".join(notes)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: Iterable[str] = (),
    *,
    section: str | None = None,
    defaults: Any = None,
) -> None:
    """One flag per setting of ``cls``; defaults are ``None`` so we can tell which flags the user gave.

    ``section`` titles the group (default: :func:`section_name`); ``defaults`` is the instance whose values
    the help quotes (default: ``cls()``). A list setting takes one comma-separated value.
    """
    group = parser.add_argument_group(f"[{section or section_name(cls)}] settings")
    defaults = cls() if defaults is None else defaults
    for f in _fields(cls):
        if f.name in skip:
            continue
        kind, _ = _base_type(f.type)
        help_text = _help(f, getattr(defaults, f.name))
        if kind is bool:
            group.add_argument(_flag(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction)
            group._group_actions[-1].help = help_text
        elif _is_list(f):
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar="V,V,...", help=help_text)
        else:
            choices = f.metadata.get("choices")
            parse = kind if kind in (int, float, str) else str
            group.add_argument(_flag(f.name), dest=f.name, type=parse, default=None, choices=choices, help=help_text)


def add_recipe_arguments(parser: argparse.ArgumentParser, cls: type, own: str, skip: Iterable[str] = ()) -> None:
    """The flags of a whole recipe: its own settings (group ``[own]``), then each section's."""
    defaults, skip = cls(), set(skip)
    add_arguments(parser, cls, skip, section=own, defaults=defaults)
    for f in _sections(cls):
        add_arguments(parser, f.metadata["section"], skip, section=f.name, defaults=getattr(defaults, f.name))


def _parse_list(name: str, text: str, annotation: Any) -> list[Any]:
    """A comma-separated flag value as a list (``"0.08,0.09"`` -> ``[0.08, 0.09]``); ranges are :func:`validate`'s.

    >>> _parse_list("kept", "0.08, 0.09", "list[float]")
    [0.08, 0.09]
    >>> _parse_list("kept", "0.1;0.2", "list[float]")
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'kept': '0.1;0.2' is not a number (in '0.1;0.2')
    """
    item = typing.get_args(_base_type(annotation)[0])[0]
    parts = [p.strip() for p in text.split(",")]
    if any(p == "" for p in parts):
        raise ConfigError(f"setting '{name}' must be a comma-separated list of values, got {text!r}")
    values = []
    for part in parts:
        try:
            values.append(item(part))
        except ValueError:
            raise ConfigError(f"setting '{name}': {part!r} is not a number (in {text!r})") from None
    return values


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` the user set on the command line (a list flag parsed into a list)."""
    out = {}
    for f in _fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        out[f.name] = _parse_list(f.name, value, f.type) if _is_list(f) and isinstance(value, str) else value
    return out


def sections_from_args(args: argparse.Namespace, cls: type, own: str) -> dict[str, dict[str, Any]]:
    """The settings of recipe ``cls`` the user set on the command line, by section."""
    out = {own: overrides_from_args(args, cls)}
    return out | {f.name: overrides_from_args(args, f.metadata["section"]) for f in _sections(cls)}


def setting_flags(cls: type) -> set[str]:
    """Every flag of the settings of ``cls`` (not of its sections), ``--no-...`` of a switch included.

    >>> @dataclasses.dataclass
    ... class Example:
    ...     lr: float = setting(1e-3, "learning rate")
    ...     prox: bool = setting(False, "closed form")
    >>> sorted(setting_flags(Example))
    ['--lr', '--no-prox', '--prox']
    """
    flags = set()
    for f in _fields(cls):
        flags.add(_flag(f.name))
        if _base_type(f.type)[0] is bool:
            flags.add("--no-" + f.name.replace("_", "-"))
    return flags
