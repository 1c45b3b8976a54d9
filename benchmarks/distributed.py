"""Data-parallel retraining: time per epoch and peak memory per process, 1 process vs N under torchrun.

Soft weight-sharing retrains LeNet-300-100 on MNIST (or, without the MNIST files, the MLP on digits) from
a fixed random initialisation for ``--epochs`` epochs at the global batch ``--batch-size``, once as one
process and once as ``torchrun --standalone --nproc_per_node=N``. Each process reports the seconds of
every epoch (training steps only, as ``metrics.csv`` records them) and its peak resident set size
(``ru_maxrss``). The first epoch includes numba's first compilation of the grid kernel; the table
quotes the last. On a machine with fewer cores than processes x threads this demonstrates correctness,
not speed-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed.py --ranks 2 --out benchmarks/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from weightshare.data.config import DataConfig
from weightshare.data.datasets import load_data
from weightshare.methods import SWSConfig, build_method
from weightshare.models.architectures import build_model
from weightshare.train.distributed import session
from weightshare.train.loop import fit


def _worker(args: argparse.Namespace) -> None:
    """One process of a run: train, then write this rank's epoch times and peak RSS as JSON."""
    mnist = Path(os.environ.get("WEIGHTSHARE_DATA", "../shared/data"), "mnist").is_dir()
    data_cfg = DataConfig(dataset="mnist", normalize="pixels") if mnist else DataConfig(dataset="digits")
    if mnist:
        data_cfg.data_dir = os.environ.get("WEIGHTSHARE_DATA", "../shared/data")
    data = load_data(data_cfg)
    config = SWSConfig.preset("digits")
    config.train.epochs, config.train.eval_test = args.epochs, False
    with session() as dist:
        torch.manual_seed(0)
        model = build_model("lenet300" if mnist else "mlp", data.num_classes)
        method = build_method(config, model, len(data.train))
        result = fit(model, data, config.train, method=method, batch_size=args.batch_size, progress=False, dist=dist)
        rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        row = {
            "rank": rank,
            "processes": world,
            "dataset": data_cfg.dataset,
            "model": "lenet300" if mnist else "mlp",
            "epoch_seconds": [r["seconds"] for r in result.history],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "val_error": result.last["val_error"],
        }
        Path(args.worker, f"rank{rank}_of{world}.json").write_text(json.dumps(row))


def _launch(processes: int, args: argparse.Namespace, where: Path) -> list[dict]:
    worker = [__file__, "--worker", str(where), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, *worker]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return [json.loads(p.read_text()) for p in sorted(where.glob(f"rank*_of{processes}.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = _launch(1, args, Path(tmp)) + _launch(args.ranks, args, Path(tmp))
    print(f"{'processes':>9} {'rank':>4} {'last epoch s':>12} {'peak RSS MiB':>12} {'val error %':>11}")
    for row in rows:
        print(
            f"{row['processes']:>9} {row['rank']:>4} {row['epoch_seconds'][-1]:>12.2f} "
            f"{row['peak_rss_mib']:>12.0f} {row['val_error']:>11.2f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
