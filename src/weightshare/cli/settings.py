"""Where a command's settings come from: defaults < source run < preset < --config file < flags; what
--resume may change; ``--method`` spellings and another method's flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from weightshare.cli.common import METHOD_COMMANDS
from weightshare.core import settings as cfgmod
from weightshare.core.errors import ConfigError

if TYPE_CHECKING:
    from weightshare.methods.base import MethodConfig


def resolve_settings(
    classes: Sequence[type],
    args: argparse.Namespace,
    preset: dict[str, dict[str, Any]],
    base: dict | None = None,
    preset_name: str | None = None,
) -> list[Any]:
    """defaults < ``base`` (e.g. a source run's settings) < preset < config file < flags, validated."""
    sections = {cfgmod.section_name(c): c for c in classes}
    named = (f"preset {preset_name or getattr(args, 'preset', None)!r}", preset)
    given = given_layers(args, list(sections), named, flag_settings(args, sections.values()))
    layers = [("source run", base or {}), *given]
    resolved = []
    for name, cls in sections.items():
        obj = cls()
        for source, values in layers:
            obj = cfgmod.apply_overrides(obj, values.get(name, {}), source)
        resolved.append(cfgmod.validate(obj))
    return resolved


def flag_settings(args: argparse.Namespace, classes: Iterable[type]) -> cfgmod.Sections:
    """The settings of ``classes`` the user gave as flags, by section."""
    return {cfgmod.section_name(cls): cfgmod.overrides_from_args(args, cls) for cls in classes}


def given_layers(
    args: argparse.Namespace,
    sections: list[str],
    preset: tuple[str, cfgmod.Sections] | None,
    flags: cfgmod.Sections,
    also: Sequence[str] = (),
) -> list[tuple[str, cfgmod.Sections]]:
    """The settings the command gives, lowest priority first: a ``(name, settings)`` preset, the ``--config``
    file, the flags. The file may also hold the sections ``also`` (another part of the command reads them)."""
    layers: list[tuple[str, cfgmod.Sections]] = [preset] if preset else []
    if getattr(args, "config", None):
        loaded = cfgmod.load_toml(args.config, [*sections, *also])
        layers.append((f"config file {args.config}", {k: v for k, v in loaded.items() if k not in also}))
    return [*layers, ("flags", flags)]


# --- --resume: the settings a run was started with -----------------------------------------------

MAY_CHANGE_ON_RESUME = {("data", "data_dir")}
"""Where the data lives may change between machines; nothing that changes the result may."""


def refuse_changes(
    layers: list[tuple[str, cfgmod.Sections]], resolve: Callable[[cfgmod.Sections], cfgmod.Sections]
) -> None:
    """Refuse (``ConfigError``) a setting given with ``--resume`` that differs from the one the run was started with.

    ``layers`` are the given settings (:func:`given_layers`); ``resolve`` applies settings to the stored ones and
    returns every setting, validated (``resolve({})``: as stored). A setting given with its stored value is fine.
    """
    given: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    for source, sections in layers:  # later layers win, as when the run was started
        for name, values in sections.items():
            given.setdefault(name, {}).update(values)
            origin.update({(name, key): source for key in values})
    stored, resolved = resolve({}), resolve(given)
    for (name, key), source in origin.items():
        before, after = stored[name][key], resolved[name][key]
        if (name, key) not in MAY_CHANGE_ON_RESUME and after != before:
            shown = _flag_text(key, after) if source == "flags" else f"{key} = {_show(after)} ({source})"
            raise ConfigError(
                f"--resume with {shown}: the run was started with {key} = {_show(before)}; start a new run to change it"
            )


def _show(value: Any) -> str:
    """A setting's value as the user would type it: ``0.03``, ``5``, ``true``, ``0.5,0.6``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, list):
        return ",".join(_show(v) for v in value)
    return str(value)


def _flag_text(name: str, value: Any) -> str:
    """The flag that gives ``value`` to setting ``name``: ``--tau 5``, ``--no-include-biases``."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {_show(value)}"


def resolve_method_config(
    cls: type[MethodConfig], args: argparse.Namespace, source: dict[str, Any], also: Sequence[str] = ()
) -> MethodConfig:
    """defaults < the source run's model and seed < preset < config file < flags, validated.

    Without ``--preset`` the preset named after the source run's model applies, if the method has one.
    The config file may hold the sections ``also`` too (e.g. ``[tune]``), which the recipe ignores.
    """
    name = args.preset or _infer_method_preset(cls, source)
    preset = (f"{cls.method} preset {name!r}", cls.preset_sections(name)) if name else None
    layers: list[tuple[str, cfgmod.Sections]] = [
        ("source run", {"train": {k: source["train"][k] for k in ("model", "seed")}}),
        *given_layers(args, cls.section_names(), preset, cfgmod.sections_from_args(args, cls, cls.method), also),
    ]
    config = cls()
    for origin, sections in layers:
        config = config.updated(sections, origin)
    return cfgmod.validate(config)


def _infer_method_preset(cls: type[MethodConfig], source: dict) -> str | None:
    """The preset named after the source run's model, if there is one (``lenet300`` -> ``lenet300``)."""
    return cls.preset_for_model(source.get("train", {}).get("model", ""))


def method_alias(argv: list[str]) -> list[str]:
    """``compress --method sws ...`` (the former spelling) -> ``compress sws ...``; ``tune`` likewise.

    >>> method_alias(["compress", "--from", "r", "--method", "dc", "--out", "o"])
    ['compress', 'dc', '--from', 'r', '--out', 'o']
    >>> method_alias(["tune", "--method=sws", "--from", "r"])
    ['tune', 'sws', '--from', 'r']
    """
    if not argv or argv[0] not in METHOD_COMMANDS:
        return argv
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--method" and i + 1 < len(argv):
            return [argv[0], argv[i + 1], *argv[1:i], *argv[i + 2 :]]
        if arg.startswith("--method="):
            return [argv[0], arg.removeprefix("--method="), *argv[1:i], *argv[i + 1 :]]
    return argv


def foreign_setting(argv: list[str]) -> str | None:
    """The one-line refusal of a flag that is another method's setting (``compress dc --tau 0.1``), if any.

    >>> foreign_setting(["compress", "dc", "--from", "r", "--tau=0.1"])
    '--tau is a setting of sws, not of dc'
    """
    from weightshare.methods import CONFIGS

    if len(argv) < 2 or argv[0] not in METHOD_COMMANDS or argv[1] not in CONFIGS:
        return None
    method, flags = argv[1], {name: cfgmod.setting_flags(cls) for name, cls in CONFIGS.items()}
    for arg in argv[2:]:
        flag = arg.split("=", 1)[0]
        owners = [name for name, own in flags.items() if flag in own]
        if flag.startswith("--") and owners and method not in owners:
            return f"{flag} is a setting of {' and '.join(owners)}, not of {method}"
    return None
