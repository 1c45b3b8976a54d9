"""What the finish of a soft weight-sharing run is worth: dead-weight removal and codebook fine-tuning.

    python benchmarks/sws_finish.py runs/tune/l5-cos-tau5e-2-lrw1e-3 --lrs 1e-4 1e-3 --epochs 3 --out finish.json

Starts from a finished run's ``quantized.safetensors`` (the hard assignment of the
retrained weights, saved before any of the steps below), removes the weights that
never change the output (:func:`weightshare.remove_dead_weights`) and then
fine-tunes the shared values and biases with every index fixed
(:class:`weightshare.finish.codebook_tuning.CodebookTuning`), printing the
validation and test error after each epoch for each learning rate. This is how
the ``lenet5`` preset's fine-tuning settings were picked: on the validation split.
The same code runs inside ``weightshare compress`` (the ``[finish]`` settings
``remove_dead``, ``codebook_epochs``, ``codebook_lr``), with the same batches.
"""

from __future__ import annotations

import argparse

import torch

from weightshare import DataConfig, TrainConfig, build_model, load_data, load_quantized, remove_dead_weights
from weightshare.core.io import write_json
from weightshare.core.settings import validate
from weightshare.finish.codebook_tuning import tune_codebooks
from weightshare.runs.rundir import RunDir
from weightshare.train.loop import evaluate_model


def finish(run_dir: str, lrs: list[float], epochs: int, data_dir: str | None) -> dict:
    config = RunDir.open(run_dir).config
    data_cfg = DataConfig(**config["data"])
    data_cfg.data_dir = data_dir or data_cfg.data_dir
    data = load_data(validate(data_cfg))
    model_name = config["train"]["model"]
    snapped = load_quantized(f"{run_dir}/quantized.safetensors")
    cleaned, removed = remove_dead_weights(build_model(model_name, data.num_classes), snapped, data.train.x[:1])
    result = {
        "run": run_dir,
        "nonzero_before": snapped.nnz,
        "nonzero_after_removal": cleaned.nnz,
        "weights": snapped.num_quantized,
        "removed": removed,
        "snapped": evaluate_model(cleaned.load_into(build_model(model_name, data.num_classes)), data),
        "tuning": {},
    }
    for lr in lrs:
        model, train_cfg = build_model(model_name, data.num_classes), TrainConfig(**config["train"])
        _, rows = tune_codebooks(model, cleaned, data, train_cfg, epochs=epochs, lr=lr, batch_size=data_cfg.batch_size)
        result["tuning"][str(lr)] = [
            {"epoch": r["epoch"], "val": r["val_error"], "test": r["test_error"]} for r in rows
        ]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished soft weight-sharing run directories")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3], help="fine-tuning learning rates")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--data-dir", help="data directory (default: the run's)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        r = finish(run, args.lrs, args.epochs, args.data_dir)
        pct = 100 / r["weights"]
        print(
            f"{run}: non-zero {r['nonzero_before'] * pct:.3f}% -> {r['nonzero_after_removal'] * pct:.3f}% "
            f"after dead-weight removal; snapped: val {r['snapped']['val_error']:.2f}% "
            f"test {r['snapped']['test_error']:.2f}%"
        )
        for lr, rows in r["tuning"].items():
            cells = "  ".join(f"ep{row['epoch']} val {row['val']:.2f} test {row['test']:.2f}" for row in rows)
            print(f"  codebook lr {lr}: {cells}")
        results.append(r)
    if args.out:
        write_json(args.out, results)  # an empty validation split's NaN becomes null


if __name__ == "__main__":
    main()
