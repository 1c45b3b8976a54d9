"""The Method protocol: how a compression method plugs into the one training loop.

A method is a small object with hooks (docs/methods.md#pipeline-method-contract),
built from its config (a :class:`MethodConfig`). The training loop in
:mod:`weightshare.train.loop` calls them; a user can call the same hooks from a loop of their own::

    method = SoftWeightSharing(model, config)
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 5e-4}, *method.parameters()])
    for epoch in range(epochs):
        for step, (x, y) in enumerate(batches):
            loss = F.cross_entropy(model(x), y) + method.penalty(model)
            opt.zero_grad(); loss.backward(); opt.step()
            method.after_step(model, TrainContext(opt, epoch, step, steps_per_epoch, epochs))
        method.on_epoch_end(model, TrainContext(opt, epoch, step, steps_per_epoch, epochs))
    qmodel = method.finalize(model)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Self

from torch import nn

from weightshare.core.coverage import Coverage
from weightshare.core.errors import ConfigError
from weightshare.core.quantized import QuantizedModel
from weightshare.core.settings import Sections, apply_sections, section, to_sections, validate
from weightshare.data.config import DataOverrides
from weightshare.finish.config import FinishConfig
from weightshare.methods.space import SearchSpace
from weightshare.train.config import TrainConfig
from weightshare.train.distill import DistillConfig
from weightshare.train.hooks import TrainContext, TrainingHooks

__all__ = [
    "AT_LEAST_ONE_EPOCH",
    "FigureSpec",
    "Method",
    "MethodConfig",
    "PlainTraining",
    "TrainContext",
    "require_epochs",
]

AT_LEAST_ONE_EPOCH: dict[str, dict[str, float]] = {"epochs": {"gt": 0}}
"""``section(TrainConfig, bounds=AT_LEAST_ONE_EPOCH)``: for a recipe that learns only while it trains (zero
epochs would hard-assign weights nothing has pulled together). Schedules that may run none keep ``ge=0``."""


def require_epochs(epochs: int, needed: int, schedule: str, detail: str) -> None:
    """Refuse train epochs that differ from what a method's schedule of rounds needs.

    >>> require_epochs(6, 7, "the Deep Compression schedule", "2 x 3 + 1")
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'epochs' is 6 but the Deep Compression schedule needs 7 (2 x 3 + 1)
    """
    if epochs != needed:
        raise ConfigError(f"setting 'epochs' is {epochs} but {schedule} needs {needed} ({detail})")


@dataclasses.dataclass
class MethodConfig:
    """A method's whole recipe: its own settings plus the ``[train]``, ``[data]``, ``[finish]`` and ``[distill]``
    sections.

    Subclasses (``SWSConfig``, ``DCConfig``, ...) name their method with ``method`` (the TOML
    section of their own settings, the CLI subcommand and the registry key), say what it is in
    ``description``, list their ``presets`` (settings by section) and the ranges ``weightshare tune``
    searches (``search_space``, :mod:`weightshare.methods.space`); the config's type alone says
    which method runs. ``data`` holds what a run changes from its source run's data settings.
    """

    method: ClassVar[str] = ""
    description: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    search_space: ClassVar[SearchSpace] = {}

    train: TrainConfig = section(TrainConfig)
    data: DataOverrides = section(DataOverrides)
    finish: FinishConfig = section(FinishConfig)
    distill: DistillConfig = section(DistillConfig)

    @classmethod
    def preset(cls, name: str) -> Self:
        """The complete, validated recipe of preset ``name`` (e.g. ``SWSConfig.preset("lenet300")``).

        >>> @dataclasses.dataclass
        ... class Example(MethodConfig):
        ...     method = "example"
        ...     presets = {"quick": {"train": {"epochs": 2}, "finish": {"codebook_epochs": 1}}}
        >>> quick = Example.preset("quick")
        >>> quick.train.epochs, quick.finish.codebook_epochs, quick.train.lr
        (2, 1, 0.001)
        >>> Example.preset("slow")
        Traceback (most recent call last):
        ...
        weightshare.core.errors.ConfigError: unknown example preset 'slow'; known: quick
        """
        return validate(cls().updated(cls.preset_sections(name), f"{cls.method} preset {name!r}"))

    @classmethod
    def preset_sections(cls, name: str) -> Sections:
        """The settings preset ``name`` sets, by section; an unknown name is refused listing the known ones."""
        if name not in cls.presets:
            known = ", ".join(sorted(cls.presets)) or "(none)"
            raise ConfigError(f"unknown {cls.method} preset {name!r}; known: {known}")
        return cls.presets[name]

    @classmethod
    def preset_for_model(cls, model: str) -> str | None:
        """The preset named after a model, if the method has one (``mlp``, the digits network: ``digits``).

        >>> @dataclasses.dataclass
        ... class Example(MethodConfig):
        ...     method = "example"
        ...     presets = {"digits": {}, "lenet5": {}}
        >>> Example.preset_for_model("mlp"), Example.preset_for_model("lenet5"), Example.preset_for_model("wrn16_4")
        ('digits', 'lenet5', None)
        """
        name = {"mlp": "digits"}.get(model, model)
        return name if name in cls.presets else None

    @classmethod
    def section_names(cls) -> list[str]:
        """The TOML sections of this recipe: the method's own first, e.g. ``sws, train, data, finish, distill``."""
        return list(cls().sections())

    def updated(self, sections: Sections, source: str = "overrides") -> Self:
        """A copy with the settings of ``sections`` replaced (not validated); unknown sections or keys are refused."""
        return apply_sections(self, sections, source, own=self.method)

    def sections(self) -> dict[str, dict[str, Any]]:
        """Every setting by section, as a TOML file (or ``config.json``) holds them; :meth:`updated` reads it back."""
        return to_sections(self, own=self.method)


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One figure kind of ``weightshare plot``; ``run`` is a :class:`weightshare.plots.artifacts.RunArtifacts`.

    ``why_not(run)``: why the kind does not apply to the run (None when it does).
    ``draw(run, sample)``: the matplotlib figure (``sample`` caps the dots of a scatter).
    ``frames(run)``: for the scatter, the style of each animation frame,
    ``(epoch, weights) -> (RGBA per dot, levels)``; None keeps the generic one.
    ``absent``: the note for a run whose method does not draw this kind.
    """

    why_not: Callable[[Any], str | None]
    draw: Callable[[Any, int], Any]
    frames: Callable[[Any], Callable[[int, Any], tuple[Any, list[Any]]]] | None = None
    absent: str = ""


class Method(TrainingHooks):
    """A compression method: training hooks plus ``finalize`` to the common result.

    Every hook of :class:`~weightshare.train.hooks.TrainingHooks` does nothing by default;
    a method adds what it needs. The pipeline talks to a method through these declared
    members only.
    """

    name = "plain"

    def summary(self) -> dict[str, Any]:
        """Method-specific results for report.json (e.g. learned per-layer bit widths)."""
        return {}

    coverage: Coverage | None = None  # what the coverage rule selected (core/coverage.py), set by the method

    def covered_tensors(self) -> dict[str, nn.Parameter]:
        """The tensors the method compresses, by name (what the scatter animation samples)."""
        return dict(self.coverage.covered) if self.coverage else {}

    def coverage_reasons(self) -> dict[str, str]:
        """Why every state-dict entry of the model is covered or stays dense (for report.json)."""
        return dict(self.coverage.reasons) if self.coverage else {}

    def records(self) -> dict[str, Any]:
        """JSON-able records for the run directory, by file name (e.g. the mixture at every epoch)."""
        return {}

    @classmethod
    def figures(cls) -> dict[str, FigureSpec]:
        """The method's own figure kinds; a kind named like a generic one (``scatter``) replaces it.

        Import the drawing code inside the override: ``import weightshare`` never needs matplotlib.
        """
        return {}

    @classmethod
    def collapse_hint(cls) -> str:
        """What usually helps when the decoded model is far worse than the retrained one (shown when it is)."""
        return (
            "the hard assignment moved the weights far from where retraining left them; "
            "retrain longer or start from a better pretrained model"
        )

    def finalize(self, model: nn.Module) -> QuantizedModel:
        """The common result: per covered tensor a codebook (entry 0 = 0.0) and one index per weight."""
        raise NotImplementedError(f"method {self.name!r} does not produce a QuantizedModel")


class PlainTraining(Method):
    """No penalty, no projection: pretraining."""
