"""Search spaces declared beside the method configs, and their TOML overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightshare.core.errors import ConfigError
from weightshare.methods import CONFIGS
from weightshare.methods.space import SearchRange, check_space, space_from_toml, space_to_dict


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_every_method_declares_a_space_its_presets_accept(method):
    cls = CONFIGS[method]
    assert cls.search_space, f"{method} declares no search space"
    for preset in cls.presets:
        check_space(cls.preset(preset), cls.search_space, f"{method} {preset}")  # ends and middle validate


def test_a_range_outside_the_setting_bounds_is_refused():
    from weightshare.methods.sws.config import SWSConfig

    with pytest.raises(ConfigError, match=r"\[sws\] tau \[-1, 1\].*tau"):
        check_space(SWSConfig(), {"sws": {"tau": SearchRange(-1.0, 1.0)}}, "test")


def test_an_unknown_setting_or_section_is_refused_naming_the_known_ones():
    from weightshare.methods.dc.config import DCConfig

    with pytest.raises(ConfigError, match="unknown setting 'tau' in \\[dc\\]; known: prune_by"):
        check_space(DCConfig(), {"dc": {"tau": SearchRange(0.1, 1.0)}}, "test")
    with pytest.raises(ConfigError, match="unknown section \\[sws\\]"):
        check_space(DCConfig(), {"sws": {"tau": SearchRange(0.1, 1.0)}}, "test")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"low": 2.0, "high": 1.0}, "low <= high"),
        ({"low": 0.0, "high": 1.0, "log": True}, "low > 0"),
        ({"choices": ()}, "may not be empty"),
        ({"low": 1, "high": 4, "step": 1, "log": True}, "not on a log scale"),
    ],
)
def test_malformed_ranges_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SearchRange(**kwargs)


def test_toml_sets_adds_and_removes_ranges(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(
        "[sws.tau]\nlow = 0.02\nhigh = 0.08\nlog = true\n"
        "[sws.lr_w]\nsearch = false\n"
        "[train.epochs]\nchoices = [50, 100]\n"
    )
    base = {"sws": {"tau": SearchRange(1e-3, 1e-1, log=True), "lr_w": SearchRange(1e-4, 1e-3, log=True)}}
    space = space_from_toml(path, base)
    assert space_to_dict(space) == {
        "sws": {"tau": {"low": 0.02, "high": 0.08, "log": True}},
        "train": {"epochs": {"choices": [50, 100]}},
    }
    assert "lr_w" in base["sws"]  # the declared space is not changed


@pytest.mark.parametrize(
    "text, message",
    [
        ("[sws.tau]\nlow = 0.1\nhgh = 1.0\n", "unknown key\\(s\\) hgh"),
        ("[sws]\ntau = 0.1\n", "must hold tables like \\[sws.tau\\]"),
        ("[sws.tau]\nlow = 1.0\nhigh = 0.1\n", "\\[sws.tau\\]: a search range needs low <= high"),
        ("[sws.tau\n", "search space file"),
    ],
)
def test_bad_space_files_fail_with_one_line_naming_the_file_and_table(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        space_from_toml(path, {})


SPACES = sorted((Path(__file__).parents[2] / "benchmarks" / "spaces").glob("*.toml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_the_benchmark_spaces_are_valid_for_their_preset(path):
    method, model = path.stem.split("-")  # sws-lenet300.toml: for `weightshare tune sws --preset lenet300`
    config = CONFIGS[method].preset(model)
    space = space_from_toml(path, config.search_space)
    check_space(config, space, str(path))
    assert len(space_to_dict(space)) >= 1 and sum(len(r) for r in space.values()) == {"sws": 2, "dc": 3}[method]


def test_the_spaces_results_names_are_there():
    results = (Path(__file__).parents[2] / "benchmarks" / "RESULTS.md").read_text()
    named = {p.stem for p in SPACES if f"benchmarks/spaces/{p.name}" in results}
    assert named == {"dc-lenet300", "sws-lenet300"}
