"""Figures from run directories: every kind renders, skips are notes, broken files are named,
and a method's own figures reach plot_run only through its ``figures`` hook."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from weightshare.core.errors import RunDirError
from weightshare.core.io import save_tensors, write_json
from weightshare.core.quantized import QuantizedModel, QuantizedTensor, save_quantized
from weightshare.methods.sws.method import MIXTURE_FINAL, SoftWeightSharing, mixture_epoch_record
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import FRAMES, MODEL_FINAL, MODEL_INIT, QUANTIZED, REPORT

pytest.importorskip("matplotlib")

from weightshare.methods.sws.figures import SIZES as SWS_SIZES
from weightshare.plots import run as plots
from weightshare.plots import weights
from weightshare.plots.artifacts import RunArtifacts
from weightshare.plots.style import DPI, FIGSIZES

PLOTS_SRC = Path(__file__).resolve().parents[2] / "src" / "weightshare" / "plots"

LAYERS = {"net.0.weight": (16, 64), "net.2.weight": (10, 16)}  # the digits MLP 64-16-10
FINAL = {
    "means": [0.0, -0.45, -0.18, 0.2, 0.5],
    "sigmas": [0.01, 0.04, 0.03, 0.03, 0.05],
    "pis": [0.6, 0.05, 0.14, 0.12, 0.09],
}
START = {"means": [0.0, -0.6, -0.3, 0.3, 0.6], "sigmas": [0.05, 0.1, 0.1, 0.1, 0.1], "pis": [0.4, 0.1, 0.2, 0.18, 0.12]}
EPOCHS = 4


def _metrics(sws: bool) -> list[dict]:
    rows = [
        {
            "phase": "pretrain",
            "epoch": e,
            "lr": 1e-3,
            "loss": 2.0 / e,
            "task_loss": 2.0 / e,
            "penalty": "",
            "val_error": 40.0 / e**1.5,
            "test_error": 42.0 / e**1.5,
            "seconds": 0.1,
        }
        for e in range(1, 6)
    ]
    for e in range(1, EPOCHS + 1):
        row = {
            "phase": "retrain",
            "epoch": e,
            "lr": 5e-4,
            "loss": 0.3 + 0.02 * e,
            "task_loss": 0.25 + 0.01 * e,
            "penalty": 0.05 - 0.01 * e,
            "val_error": 4.0 + 0.3 * e,
            "test_error": 4.2 + 0.3 * e,
            "sparsity": 0.1 + 0.05 * e,
            "seconds": 0.2,
        }
        if sws:
            row |= {"tau": 5e-3, "complexity_loss": 4000.0 - 1500.0 * e, "components": 5}
        rows.append(row)
    return rows


def _mixture_at(t: float, epoch: int | None = None) -> dict:
    mix = {k: [(1 - t) * a + t * b for a, b in zip(START[k], FINAL[k], strict=True)] for k in FINAL}
    return {"epoch": epoch, **mix} if epoch is not None else mix


def _weights(gen: torch.Generator) -> tuple[dict, dict, dict]:
    """Pretrained and retrained state dicts and the component of each covered weight (~30% zeros)."""
    means, sigmas = torch.tensor(FINAL["means"]), torch.tensor(FINAL["sigmas"])
    init, final, comps = {}, {}, {}
    for name, shape in LAYERS.items():
        w0 = 0.25 * torch.randn(shape, generator=gen)
        comp = (w0.unsqueeze(-1) - means[1:]).abs().argmin(-1) + 1
        comp[w0.abs() < 0.1] = 0
        init[name], comps[name] = w0, comp
        final[name] = means[comp] + 0.5 * sigmas[comp] * torch.randn(shape, generator=gen)
        bias = name.replace("weight", "bias")
        init[bias] = final[bias] = 0.1 * torch.randn(shape[0], generator=gen)
    return init, final, comps


def _quantized(final: dict, comps: dict, method: str) -> QuantizedModel:
    dense = {n: t for n, t in final.items() if n.endswith("bias")}
    if method == "sws":
        codebooks = [torch.tensor(FINAL["means"])]
        quantized = {n: QuantizedTensor(c) for n, c in comps.items()}
    else:  # Deep Compression: one codebook per layer
        codebooks = [torch.tensor([0.0, -0.4, -0.2, 0.2, 0.4]), torch.tensor([0.0, -0.5, 0.5])]
        quantized = {
            n: QuantizedTensor(c.clamp(max=codebooks[i].numel() - 1), i) for i, (n, c) in enumerate(comps.items())
        }
    return QuantizedModel(codebooks, quantized, dense, {"method": method, "model": "mlp"})


def _report(method: str, comps: dict, test_error: float, cr: float) -> dict:
    layers = [
        {
            "name": n,
            "shape": list(c.shape),
            "numel": c.numel(),
            "nnz": int((c != 0).sum()),
            "kept_fraction": float((c != 0).float().mean()),
            "unique": 5,
            "file_bytes": 100,
            "bits_per_weight": 1.5 + i,
        }
        for i, (n, c) in enumerate(comps.items())
    ]
    return {
        "method": method,
        "model": "mlp",
        "dataset": "digits",
        "errors": {
            "pretrained": {"val_error": 3.0, "test_error": 3.5},
            "decoded": {"val_error": test_error - 0.2, "test_error": test_error},
        },
        "file": {"bytes": 900, "cr_all": cr, "cr_weights": cr * 1.2},
        "paper_style": {"cr": cr * 1.5},
        "layers": layers,
    }


def make_digits_run(
    path: Path, method: str = "sws", test_error: float = 4.5, cr: float = 20.0, frames: bool = True
) -> Path:
    """A realistic compression run of the digits MLP 64-16-10, written the way compress() writes one."""
    gen = torch.Generator().manual_seed(7)
    init, final, comps = _weights(gen)
    run = RunDir.create(
        path,
        {
            "command": "compress",
            "method": method,
            "source": "runs/pre",
            "data": {"dataset": "digits"},
            "train": {"model": "mlp"},
            method: {},
        },
    )
    run.write_metrics(_metrics(method == "sws"))
    save_tensors(run.path_of(MODEL_INIT), init)
    save_tensors(run.path_of(MODEL_FINAL), final)
    save_quantized(_quantized(final, comps, method), run.path_of(QUANTIZED))
    write_json(run.path_of(REPORT), _report(method, comps, test_error, cr))
    if method == "sws":  # under the names soft weight-sharing declares for its records
        for e in range(1, EPOCHS + 1):
            run.write_record(mixture_epoch_record(e), _mixture_at(e / EPOCHS, e))
        run.write_record(MIXTURE_FINAL, _mixture_at(1.0))
    if frames:
        w0 = torch.cat([init[n].reshape(-1) for n in LAYERS])
        wt = torch.cat([final[n].reshape(-1) for n in LAYERS])
        for e in range(EPOCHS + 1):
            t = e / EPOCHS
            save_tensors(run.path_of(FRAMES, f"epoch_{e:04d}.safetensors"), {"w": (1 - t) * w0 + t * wt})
    return path


@pytest.fixture(scope="module")
def sws_run(tmp_path_factory) -> Path:
    return make_digits_run(tmp_path_factory.mktemp("plots") / "sws")


@pytest.fixture(scope="module")
def sws_figures(sws_run) -> list[Path]:
    return plots.plot_run(sws_run)


def _check_png(path: Path, kind: str) -> None:
    from matplotlib.image import imread

    image = imread(path)
    width, height = FIGSIZES[kind] if kind in FIGSIZES else SWS_SIZES[kind]
    assert image.shape[:2] == (round(height * DPI), round(width * DPI)), path
    assert image[..., :3].var() > 0.005, f"{path} looks blank"


def test_every_kind_renders_for_a_digits_run(sws_run, sws_figures):
    assert [p.name for p in sws_figures] == [f"{k}.png" for k in plots.KINDS]
    for path, kind in zip(sws_figures, plots.KINDS, strict=True):
        assert path.parent == sws_run / "figures"
        _check_png(path, kind)


def test_pdf_beside_png(sws_run):
    written = plots.plot_run(sws_run, ["layers"], pdf=True)
    assert [p.name for p in written] == ["layers.png", "layers.pdf"]
    assert written[1].read_bytes().startswith(b"%PDF")


def test_gif_animates_the_frames_then_removes_them(tmp_path):
    from PIL import Image

    run = make_digits_run(tmp_path / "gif")
    path = plots.make_gif(run)
    assert path == run / "figures" / "scatter.gif"
    with Image.open(path) as gif:
        assert gif.n_frames > EPOCHS
    assert not (run / "frames").exists()
    with pytest.raises(RunDirError, match="frames"):
        plots.make_gif(run)


def test_deep_compression_run_skips_the_mixture_figures(tmp_path, capsys):
    run = make_digits_run(tmp_path / "dc", method="dc", frames=False)
    written = plots.plot_run(run)
    assert [p.stem for p in written] == ["curves", "scatter", "layers", "filters"]
    for path in written:
        _check_png(path, path.stem)
    out = capsys.readouterr().out
    assert "mixture: skipped" in out and "dynamics: skipped" in out
    assert plots.plot_run(run, ["dynamics"]) == []
    assert plots.plot_run(run, ["scatter"], sample=300)[0].name == "scatter.png"
    assert "dynamics: skipped (no mixture records" in capsys.readouterr().out


def test_unknown_kind_names_the_allowed_ones(sws_run):
    with pytest.raises(ValueError, match="curves, scatter, mixture, dynamics, layers, filters"):
        plots.plot_run(sws_run, ["scatter", "histogram"])


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "metrics.csv does not exist"),
        ("phase,epoch,loss\npretrain,1,oops\n", "metrics.csv is corrupt: line 2"),
        ("garbage without a header", "metrics.csv is corrupt"),
        (b"\xff\xfe\x00\x81", "metrics.csv is not a readable"),
    ],
)
def test_broken_metrics_are_named(tmp_path, content, match):
    run = make_digits_run(tmp_path / "broken", frames=False)
    metrics = run / "metrics.csv"
    if content is None:
        metrics.unlink()
    else:
        metrics.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RunDirError, match=match):
        plots.plot_run(run, ["curves"])
    assert plots.plot_run(run, ["layers"])  # figures that do not need the curves still work


def test_pareto_over_runs_of_two_methods(tmp_path, capsys):
    runs = [
        make_digits_run(tmp_path / name, method, err, cr, frames=False)
        for name, method, err, cr in (
            ("sws-a", "sws", 4.0, 40.0),
            ("sws-b", "sws", 3.5, 15.0),
            ("dc-a", "dc", 5.0, 25.0),
        )
    ]
    (tmp_path / "pretrain").mkdir()
    path = plots.plot_pareto([*runs, tmp_path / "pretrain"], tmp_path / "out")
    assert path == tmp_path / "out" / "pareto.png"
    _check_png(path, "pareto")
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(RunDirError, match="no run with a report.json"):
        plots.plot_pareto([tmp_path / "pretrain"], tmp_path / "p.png")


def test_pareto_front_keeps_only_undominated_runs():
    from weightshare.plots.summary import ParetoPoint, pareto_front

    points = [
        ParetoPoint("a", "sws", 4.0, 40.0),
        ParetoPoint("b", "sws", 3.5, 15.0),
        ParetoPoint("c", "dc", 5.0, 25.0),
        ParetoPoint("d", "dc", 3.0, 10.0),
    ]
    assert [p.label for p in pareto_front(points)] == ["d", "b", "a"]


def test_import_weightshare_does_not_import_matplotlib():
    # weightshare.plots too: its KINDS asks every method for its figures only on first use.
    code = "import sys, weightshare, weightshare.runs.rundir, weightshare.plots; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_conv_filters_tile_with_their_input_channels_side_by_side():
    from weightshare.plots.summary import _mosaic, _tiles

    filters = np.arange(16 * 3 * 9, dtype=float).reshape(16, 3, 3, 3)
    tiles, columns = _tiles(filters, limit=32)
    assert tiles.shape == (16, 3, 9) and columns == 3  # one 3×9 strip per filter, about square overall
    np.testing.assert_array_equal(tiles[1, :, 3:6], filters[1, 1])
    mosaic = _mosaic(tiles, columns)
    assert mosaic.shape == (6 * 4 - 1, 3 * 10 - 1)
    assert np.isnan(mosaic).sum() == mosaic.size - tiles.size


# --- a method's own figures come through its hook ------------------------------------------------


def _legend_texts(fig) -> list[str]:
    """Every legend entry and title of a figure (what tells the two scatters apart)."""
    texts = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            texts += [legend.get_title().get_text(), *(t.get_text() for t in legend.get_texts())]
    return texts


def _draw(specs: dict, kind: str, run: RunArtifacts) -> list[str]:
    from weightshare.plots.style import plt

    fig = specs[kind].draw(run, 300)
    try:
        return _legend_texts(fig)
    finally:
        plt.close(fig)


def test_deep_compression_run_lists_no_mixture_kinds_and_draws_the_generic_scatter(tmp_path):
    run = RunArtifacts(make_digits_run(tmp_path / "dc", method="dc", frames=False))
    specs = plots.figure_specs(run)
    assert list(specs) == ["curves", "scatter", "layers", "filters"]
    assert specs["scatter"] is weights.SCATTER
    legend = _draw(specs, "scatter", run)
    assert any(t.startswith("codebook values") for t in legend)
    assert not any("assigned to" in t for t in legend)


def test_sws_run_draws_its_kinds_through_the_method_hook(sws_run):
    run = RunArtifacts(sws_run)
    specs = plots.figure_specs(run)
    assert list(specs) == list(plots.KINDS)
    assert specs["scatter"] is not weights.SCATTER
    assert any("assigned to" in t for t in _draw(specs, "scatter", run))  # coloured by mixture component


def test_plot_run_asks_the_method_class_and_nothing_else(sws_run, monkeypatch):
    original = SoftWeightSharing.figures
    drawn: list[str] = []

    def spy(kind, draw):
        def wrapped(run, sample):
            drawn.append(kind)
            return draw(run, sample)

        return wrapped

    def spying(cls):
        return {k: dataclasses.replace(s, draw=spy(k, s.draw)) for k, s in original().items()}

    monkeypatch.setattr(SoftWeightSharing, "figures", classmethod(spying))
    written = plots.plot_run(sws_run, ["mixture", "dynamics", "layers"])
    assert drawn == ["mixture", "dynamics"] and [p.stem for p in written] == ["mixture", "dynamics", "layers"]
    # Without the hook the same run has only the generic figures: plots/ knows no mixture of its own.
    monkeypatch.setattr(SoftWeightSharing, "figures", classmethod(lambda cls: {}))
    assert plots.KINDS == ("curves", "scatter", "layers", "filters")
    with pytest.raises(ValueError, match="unknown figure kind.*'mixture'"):
        plots.plot_run(sws_run, ["mixture"])
    assert plots.figure_specs(RunArtifacts(sws_run))["scatter"] is weights.SCATTER


def test_a_method_kind_follows_the_scatter_and_a_same_named_kind_replaces_the_generic_one():
    generic = plots.generic_figures()
    own = {"extra": dataclasses.replace(generic["layers"]), "filters": dataclasses.replace(generic["curves"])}
    merged = plots._merged(generic, own)
    assert list(merged) == ["curves", "scatter", "extra", "layers", "filters"]
    assert merged["filters"] is own["filters"] and merged["layers"] is generic["layers"]


def test_a_pretraining_run_has_no_method_and_only_the_generic_kinds(tmp_path):
    RunDir.create(tmp_path / "pre", {"command": "pretrain", "train": {"model": "mlp"}})
    assert plots.method_class("pretrain") is None
    assert list(plots.figure_specs(RunArtifacts(tmp_path / "pre"))) == ["curves", "scatter", "layers", "filters"]


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


@pytest.mark.parametrize("path", sorted(PLOTS_SRC.glob("*.py")), ids=lambda p: p.name)
def test_plots_import_no_specific_method_and_name_no_method_record(path):
    methods = PLOTS_SRC.parent / "methods"
    specific = {f"weightshare.methods.{d.name}" for d in methods.iterdir() if (d / "__init__.py").is_file()}
    assert "weightshare.methods.sws" in specific
    tree = ast.parse(path.read_text())
    for name in _imported_modules(tree):
        assert not any(name == m or name.startswith(m + ".") for m in specific), f"{path.name} imports {name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for record in ("mixture_final", "mixture_epochs"):
                assert record not in node.value, f"{path.name} names the record {record!r}"
