"""Every method's config: a registered recipe whose presets validate, with one flat name per setting."""

import dataclasses

import pytest

from weightshare.cli import main
from weightshare.core.errors import ConfigError
from weightshare.core.settings import validate
from weightshare.methods import CONFIGS, METHODS, config_class, method_class
from weightshare.methods.base import MethodConfig
from weightshare.train.config import TrainConfig

PRESETS = [(cls, name) for cls in METHODS for name in cls.presets]


@pytest.mark.parametrize(("cls", "name"), PRESETS, ids=[f"{c.method}-{n}" for c, n in PRESETS])
def test_every_preset_of_every_method_validates(cls, name):
    cfg = cls.preset(name)  # validated; dc and pwfn check their epochs against their rounds in their own tests
    assert type(cfg) is cls and validate(cfg) == cfg
    assert cfg.sections() == cls().updated(cls.presets[name]).sections()  # nothing but the preset changed


def test_the_registry_comes_from_the_config_classes():
    assert list(CONFIGS) == ["sws", "dc", "pwfn", "admm"]
    for name, cls in CONFIGS.items():
        assert issubclass(cls, MethodConfig) and cls.method == name and cls.description
        assert METHODS[cls].name == name and method_class(cls()) is METHODS[cls] and config_class(name) is cls
        assert cls.section_names() == [name, "train", "data", "finish", "distill"]


def test_a_subclass_of_a_config_builds_its_method():
    @dataclasses.dataclass
    class Tweaked(CONFIGS["dc"]):
        pass

    assert method_class(Tweaked()) is METHODS[CONFIGS["dc"]]
    with pytest.raises(ConfigError, match="not a method's config: TrainConfig"):
        method_class(TrainConfig())


@pytest.mark.parametrize("cls", list(METHODS), ids=lambda c: c.method)
def test_each_name_is_used_by_one_section_of_a_recipe(cls):
    # flags are flat (--lr, --tau, --codebook-epochs), so a name must not repeat across sections
    names = [key for section in cls().sections().values() for key in section]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("cls", list(METHODS), ids=lambda c: c.method)
def test_only_soft_weight_sharing_removes_dead_weights_by_default(cls):
    assert cls().finish.remove_dead is (cls.method == "sws") and cls().finish.codebook_epochs == 0


# The two ways a user pretrains the digits MLP: the plain command (20 epochs at Adam 1e-3, batch 128: 5.0 % test
# error at seed 0) and the demo's recipe (the digits pretrain preset: 30 epochs, cosine, batch 32: 2.22 %).
DIGITS_STARTS = {"default": ["--model", "mlp", "--dataset", "digits"], "demo": ["--preset", "digits"]}


@pytest.fixture(scope="module")
def digits_starts(tmp_path_factory):
    """``weightshare pretrain`` into ``ROOT/default`` and ``ROOT/demo`` (see ``DIGITS_STARTS``); returns ROOT."""
    root = tmp_path_factory.mktemp("digits_starts")
    for name, argv in DIGITS_STARTS.items():
        assert main(["pretrain", *argv, "--out", str(root / name), "--quiet"]) == 0
    return root


@pytest.mark.slow  # about 25 s for all eight runs on two cores
@pytest.mark.parametrize("start", list(DIGITS_STARTS))
@pytest.mark.parametrize("cls", list(METHODS), ids=lambda c: c.method)
def test_every_digits_preset_decodes_within_two_points_of_any_sensible_start(
    cls, start, digits_starts, tmp_path, cli_compress
):
    # Issue 20 point 6. Measured over pretraining seeds 0-4 (benchmarks/digits_starts.py, RESULTS.md): decoded minus
    # pretrained test error at most +1.11 points for sws (both starts; the demo's seed 0: +0.56, at 38.4x from the
    # file), the others <= +0.83.
    report = cli_compress(cls.method, digits_starts / start, tmp_path / cls.method)
    errors = {stage: report["errors"][stage]["test_error"] for stage in ("pretrained", "decoded")}
    assert errors["decoded"] <= errors["pretrained"] + 2.0, errors
    assert report["warnings"] == []
    if start == "demo" and cls.method == "sws":  # the demo's own run: within 1 point at >= 30x from the file's bytes
        assert report["file"]["cr_all"] >= 30.0
        assert errors["decoded"] <= errors["pretrained"] + 1.0, errors
