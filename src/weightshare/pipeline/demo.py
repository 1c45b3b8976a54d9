"""``weightshare demo``: the whole pipeline on the built-in 8×8 digits, in about a minute.

pretrain the digits MLP -> soft weight-sharing -> QuantizedModel -> model.wsz ->
decode -> evaluate -> report -> figures. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from weightshare.core.settings import apply_overrides
from weightshare.data.config import DataConfig
from weightshare.data.datasets import load_data
from weightshare.methods import SWSConfig
from weightshare.pipeline.pretrain import pretrain
from weightshare.report.run_report import format_summary
from weightshare.train.config import TrainConfig
from weightshare.train.presets import PRETRAIN_PRESETS

__all__ = ["run_demo"]


def _fresh_dir(base: str | os.PathLike) -> Path:
    """``base``, or ``base-2``, ``base-3``... so an earlier demo is never overwritten."""
    path, n = Path(base), 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = Path(f"{base}-{n}")
    return path


def run_demo(out: str | os.PathLike = "runs/demo", progress: bool = True) -> dict:
    """Run the demo into a fresh directory; returns the compression report."""
    from weightshare.pipeline.compress import compress

    root = _fresh_dir(out)
    preset = PRETRAIN_PRESETS["digits"]
    data_cfg = apply_overrides(DataConfig(), preset["data"])
    train_cfg = apply_overrides(TrainConfig(), preset["train"])
    data = load_data(data_cfg)
    print(f"[1/3] pretraining the digits MLP ({train_cfg.epochs} epochs) -> {root / 'pretrain'}")
    pretrain(data_cfg, train_cfg, root / "pretrain", progress=progress, data=data)
    config = SWSConfig.preset("digits")
    print(f"[2/3] soft weight-sharing retraining ({config.train.epochs} epochs) -> {root / 'sws'}")
    report = compress(root / "pretrain", config, root / "sws", progress=progress, record_frames=True, data=data)
    print(format_summary(report))
    for warning in report["warnings"]:  # a demo that collapsed says so rather than quote a compression rate
        print(f"warning: {warning['message']}")
    _figures(root / "sws")
    return report


def _figures(run_dir: Path) -> None:
    try:
        import matplotlib  # noqa: F401  (the optional 'plots' extra)

        from weightshare.plots.run import plot_run
    except ImportError as exc:  # matplotlib is the optional 'plots' extra
        print(f"[3/3] figures skipped: {exc} (pip install 'weightshare[plots]')")
        return
    from weightshare.plots.run import make_gif

    written = [*plot_run(run_dir), make_gif(run_dir)]
    print(f"[3/3] figures written to {run_dir / 'figures'}: {', '.join(p.name for p in written)}")
