"""Configs as dataclasses: one name per knob in the API, the CLI and the config file.

A setting is a dataclass field. Its name is the Python keyword, the TOML key
(inside the section of its dataclass, e.g. ``[train] lr = 1e-3``) and, with
underscores turned into dashes, the command-line flag (``--lr``). Constraints
live in the field's metadata (:func:`setting`) and are checked by
:func:`validate` before any work starts, so a bad value fails with a message
naming the setting and what is allowed.

Resolution order: dataclass defaults < preset < config file < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from weightshare.core.errors import ConfigError

__all__ = [
    "setting",
    "validate",
    "apply_overrides",
    "add_arguments",
    "overrides_from_args",
    "load_toml",
    "to_dict",
]


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
    """A dataclass field with help text and the constraints :func:`validate` checks."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, list | dict | tuple):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- helpers over dataclass fields ---------------------------------------------------


def _fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls_or_obj))


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) of a field annotation such as ``float`` or ``str | None``."""
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


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"setting '{name}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    if value is None or not isinstance(value, int | float) or isinstance(value, bool):
        return
    bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b)]
    bounds += [("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
    for key, symbol, ok in bounds:
        limit = meta.get(key)
        if limit is not None and not ok(value, limit):
            raise ConfigError(f"setting '{name}' must be {symbol} {limit}; got {value!r}")


def validate(config: Any) -> Any:
    """Check every field's type and range; also call the config's own ``check()`` if it has one.

    >>> @dataclasses.dataclass
    ... class Example:
    ...     lr: float = setting(1e-3, "learning rate", gt=0)
    >>> validate(Example(lr=-1.0))
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'lr' must be > 0; got -1.0
    """
    for f in _fields(config):
        value = _coerce(f.name, getattr(config, f.name), f.type)
        setattr(config, f.name, value)
        _check_range(f.name, value, f.metadata)
    check = getattr(config, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as exc:  # method configs may raise plain ValueError naming the setting
            raise ConfigError(str(exc)) from exc
    return config


def apply_overrides(config: Any, overrides: Mapping[str, Any], source: str = "overrides") -> Any:
    """Return a copy of ``config`` with ``overrides`` applied; unknown names are refused."""
    names = {f.name for f in _fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)} for [{section_name(config)}]; "
            f"known: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(config, **dict(overrides))


def section_name(config: Any) -> str:
    """TOML section of a config dataclass: ``TrainConfig`` -> ``train``, ``SWSConfig`` -> ``sws``."""
    name = config.__name__ if isinstance(config, type) else type(config).__name__
    return name.removesuffix("Config").lower()


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# --- config files -------------------------------------------------------------------


def load_toml(path: str | Path, sections: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Read a TOML file whose tables are config sections (``[data]``, ``[train]``, ``[sws]``...)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    allowed = set(sections)
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key not in allowed or not isinstance(value, dict):
            raise ConfigError(f"config file {path}: unknown section [{key}]; expected one of {sorted(allowed)}")
        out[key] = value
    return out


# --- command-line flags -------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """One flag per field; defaults are ``None`` so we can tell which flags the user gave."""
    group = parser.add_argument_group(f"[{section_name(cls)}] settings")
    for f in _fields(cls):
        if f.name in skip:
            continue
        kind, _ = _base_type(f.type)
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{help_text} (default {default!r})" if help_text else f"default {default!r}"
        if kind is bool:
            group.add_argument(_flag(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction)
            group._group_actions[-1].help = help_text
        else:
            choices = f.metadata.get("choices")
            parse = kind if kind in (int, float, str) else str
            group.add_argument(_flag(f.name), dest=f.name, type=parse, default=None, choices=choices, help=help_text)


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in _fields(cls) if getattr(args, f.name, None) is not None}
