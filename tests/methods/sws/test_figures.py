"""Soft weight-sharing's own figures read the records the method writes, under the names it declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from weightshare.core.errors import RunDirError
from weightshare.core.io import save_tensors
from weightshare.core.quantized import save_quantized
from weightshare.methods.base import TrainContext
from weightshare.methods.sws.config import SWSConfig
from weightshare.methods.sws.method import MIXTURE_EPOCHS, MIXTURE_FINAL, SoftWeightSharing
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import FIGURES, MODEL_FINAL, MODEL_INIT, QUANTIZED

pytest.importorskip("matplotlib")

from weightshare.methods.sws.figures import SIZES, Mixture, MixtureFigures, component_colouring, mixture_frames
from weightshare.plots.artifacts import RunArtifacts
from weightshare.plots.style import DPI, save_figure

EPOCHS = 3
COMPONENTS = 5


def _retrain(net: nn.Module, sws: SoftWeightSharing) -> None:
    """A few epochs of the complexity loss alone: enough for the mixture to move between records."""
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": 1e-2}, *sws.parameters()])
    steps = 4
    for epoch in range(EPOCHS):
        for _ in range(steps):
            loss = sws.penalty(net)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sws.on_epoch_end(net, TrainContext(opt, epoch, steps - 1, steps_per_epoch=steps, epochs=EPOCHS))


@pytest.fixture(scope="module")
def sws_run(tmp_path_factory) -> Path:
    """A tiny soft weight-sharing run written through the method's own API (records, finalize)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    sws = SoftWeightSharing(net, SWSConfig(num_components=COMPONENTS), n_train=100)
    _retrain(net, sws)
    path = tmp_path_factory.mktemp("sws") / "run"
    run = RunDir.create(path, {"command": "compress", "method": "sws", "train": {"model": "tiny"}})
    for name, record in sws.records().items():
        run.write_record(name, record)
    save_tensors(run.path_of(MODEL_INIT), init)
    save_tensors(run.path_of(MODEL_FINAL), net.state_dict())
    save_quantized(sws.finalize(net), run.path_of(QUANTIZED))
    return path


@pytest.fixture
def figures() -> MixtureFigures:
    return MixtureFigures(final=MIXTURE_FINAL, epochs=MIXTURE_EPOCHS)


@pytest.fixture
def specs(figures):
    return figures.specs()


def test_the_hook_finds_the_records_where_the_method_writes_them(sws_run, tmp_path):
    specs = SoftWeightSharing.figures()
    assert set(specs) == {"scatter", "mixture", "dynamics"} and specs["scatter"].frames is not None
    run = RunArtifacts(sws_run)
    assert [specs[k].why_not(run) for k in ("scatter", "mixture", "dynamics")] == [None, None, None]
    bare = RunArtifacts(RunDir.create(tmp_path / "bare", {"command": "compress", "method": "sws"}).path)
    assert specs["mixture"].why_not(bare) == specs["mixture"].absent
    assert specs["dynamics"].why_not(bare) == specs["dynamics"].absent


def test_the_figures_read_back_what_the_method_recorded(sws_run, figures, specs):
    run = RunArtifacts(sws_run)
    assert specs["mixture"].why_not(run) is None and specs["dynamics"].why_not(run) is None
    history = figures.history(run)
    assert [m.epoch for m in history] == list(range(1, EPOCHS + 1))
    assert figures.final_mixture(run).size == COMPONENTS
    assert not np.allclose(history[0].means, history[-1].means)  # the records differ epoch by epoch


@pytest.mark.parametrize("kind", ["mixture", "dynamics"])
def test_mixture_figures_render(sws_run, specs, kind):
    from matplotlib.image import imread

    run = RunArtifacts(sws_run)
    (path,) = save_figure(specs[kind].draw(run, 100), run.path_of(FIGURES), kind, pdf=False)
    image = imread(path)
    width, height = SIZES[kind]
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert image[..., :3].var() > 0.005, f"{path} looks blank"


def test_scatter_colours_by_component_or_falls_back_to_the_codebook(sws_run, figures):
    run = RunArtifacts(sws_run)
    mixture = figures.final_mixture(run)
    by_component = component_colouring(run, mixture)
    assert all(lv.sigma is not None and lv.component is not None for lv in by_component.levels)
    assert by_component.index.size == run.covered_indices().size
    plain = component_colouring(run, None)  # no mixture record: the generic colouring by codebook index
    assert all(lv.sigma is None for lv in plain.levels)


def test_each_frame_takes_the_mixture_of_its_epoch(sws_run, figures):
    run = RunArtifacts(sws_run)
    history = figures.history(run)
    style = mixture_frames(run, history)
    w = np.linspace(-0.3, 0.3, 50)
    for epoch, mixture in [(0, history[0]), (2, history[1]), (9, history[-1])]:
        colors, levels = style(epoch, w)
        assert colors.shape == (w.size, 4)
        assert {lv.value for lv in levels} <= set(mixture.means.tolist())
    _, plain = mixture_frames(run, [])(1, w)  # no history: the final codebook values in grey
    assert plain and all(lv.sigma is None and lv.color == "0.4" for lv in plain)


def test_a_broken_mixture_record_is_named(tmp_path, figures):
    run = RunDir.create(tmp_path / "run", {"command": "compress", "method": "sws"})
    run.write_record(MIXTURE_FINAL, {"means": [0.0, 0.1], "sigmas": [0.1, 0.1], "pis": [0.5]})
    with pytest.raises(RunDirError, match=f"{MIXTURE_FINAL}: means, sigmas and pis"):
        figures.final_mixture(RunArtifacts(run.path))


def test_mixture_assigns_weights_to_the_most_responsible_component():
    mix = Mixture(np.array([0.0, -0.5, 0.5]), np.array([0.01, 0.1, 0.1]), np.array([0.8, 0.1, 0.1]))
    assert mix.assign(np.array([0.001, -0.45, 0.6, 0.2])).tolist() == [0, 1, 2, 2]
