"""What quantizing the biases costs and saves: a finished run re-finished with ``[finish] dense_param_bits``.

    OMP_NUM_THREADS=1 python benchmarks/dense_param_bits.py runs/lenet300-sws --out-dir runs/densebits \\
        --bits 0 3 4 5 6 --codebook-epochs 0 3 --data-dir ../shared/data

Starts from the run's ``quantized.safetensors`` (the QuantizedModel its file was written
from: the method's hard assignment after the run's own finish; it must be one without
codebook fine-tuning, or the grid would tune twice) and, for every pair of ``--bits`` and
``--codebook-epochs``, runs the finishing stages with the same code as ``weightshare
compress`` (:func:`weightshare.finish.run_finishing`: dead-weight removal as the run had it,
then the biases quantized at that many bits, then the fine-tuning) into a NEW run directory
``OUT_DIR/bits{B}-epochs{E}``, which gets ``model.wsz``, ``report.json`` and the decoded
model's validation and test error. The table printed at the end (and ``--json``) has per
pair: the file's bytes, the bytes not attributed to the weights (the biases, with their
codebooks and their share of the header: ``file.bytes - file.weights_bytes``), the
validation and test error before the fine-tuning and of the decoded model.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from weightshare import DataConfig, TrainConfig, build_model, load_data, load_quantized
from weightshare.core.io import read_json, write_json
from weightshare.core.settings import validate
from weightshare.data.datasets import DataBundle
from weightshare.finish import FinishConfig, run_finishing
from weightshare.pipeline.compress import write_and_report
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import QUANTIZED, REPORT


def refinish(source: RunDir, data: DataBundle, out: Path, finish: FinishConfig, batch_size: int) -> dict[str, Any]:
    """One re-finished run in ``out``; returns its figures."""
    config = source.config
    model = build_model(config["train"]["model"], data.num_classes)
    train_cfg = TrainConfig(**config["train"])
    torch.manual_seed(train_cfg.seed)
    snapped = load_quantized(source.path_of(QUANTIZED))
    finished = run_finishing(model, snapped, data, finish, train_cfg, batch_size=batch_size)
    record = {**config, "command": "refinish", "source": str(source.path), "finish": dataclasses.asdict(finish)}
    run = RunDir.create(out, record)
    if finished.rows:
        run.write_metrics(finished.rows)
    source_errors = read_json(source.path_of(REPORT))["errors"]
    errors = {k: v for k, v in source_errors.items() if k in ("pretrained", "retrained")} | finished.errors
    report = write_and_report(run, finished.qmodel, data, errors=errors, method_summary=finished.summary())
    before = next(report["errors"][k] for k in ("dense_quantized", "snapped", "decoded") if k in report["errors"])
    return {
        "bits": finish.dense_param_bits,
        "codebook_epochs": finish.codebook_epochs,
        "bytes": report["file"]["bytes"],
        "bias_bytes": report["file"]["bytes"] - report["file"]["weights_bytes"],
        "val_before_tuning": before.get("val_error"),
        "test_before_tuning": before["test_error"],
        "val_decoded": report["errors"]["decoded"].get("val_error"),
        "test_decoded": report["errors"]["decoded"]["test_error"],
        "out": str(out),
    }


def _print(rows: list[dict[str, Any]]) -> None:
    print("bits  epochs   bytes  bias bytes  val/test before tuning  val/test decoded")
    for r in rows:
        before = f"{r['val_before_tuning'] or float('nan'):.2f} / {r['test_before_tuning']:.2f}"
        decoded = f"{r['val_decoded'] or float('nan'):.2f} / {r['test_decoded']:.2f}"
        print(f"{r['bits']:>4}  {r['codebook_epochs']:>6}  {r['bytes']:>6}  {r['bias_bytes']:>10.1f}  "
              f"{before:>22}  {decoded:>16}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished compression run (without codebook fine-tuning)")
    parser.add_argument("--out-dir", required=True, help="a new directory; one run directory per setting inside")
    parser.add_argument("--bits", type=int, nargs="+", default=[0, 3, 4, 5, 6], help="dense_param_bits (0 = off)")
    parser.add_argument("--codebook-epochs", type=int, nargs="+", default=[0, 3], help="codebook fine-tuning epochs")
    parser.add_argument("--codebook-lr", type=float, help="its learning rate (default: the run's)")
    parser.add_argument("--data-dir", help="data directory (default: the run's)")
    parser.add_argument("--json", help="write the table as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = RunDir.open(args.run)
    recorded = FinishConfig(**source.config.get("finish", {}))
    data_cfg = DataConfig(**source.config["data"])
    data_cfg = validate(dataclasses.replace(data_cfg, data_dir=args.data_dir or data_cfg.data_dir))
    data = load_data(data_cfg)
    lr = args.codebook_lr or recorded.codebook_lr
    rows = []
    for epochs in args.codebook_epochs:
        for bits in args.bits:
            finish = dataclasses.replace(recorded, dense_param_bits=bits, codebook_epochs=epochs, codebook_lr=lr)
            out = Path(args.out_dir) / f"bits{bits}-epochs{epochs}"
            rows.append(refinish(source, data, out, validate(finish), data_cfg.batch_size))
            _print(rows[-1:])
    _print(rows)
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
