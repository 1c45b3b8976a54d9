"""Cost of the soft weight-sharing prior: step-time ratio and extra peak memory.

Speed: for LeNet-300-100 and LeNet-5-Caffe at batch 128 on random MNIST-shaped input, the time
of one SWS training step (forward, CE + tau/N * complexity_loss, backward, Adam step over the
four parameter groups of docs/methods.md#sws-optimizer) divided by the time of a plain step
(forward, CE, backward, Adam), for each complexity kernel: "grid" (tabulated, the default),
"fast" (exact, chunked) and "naive" (autograd logsumexp). Plain and SWS steps are interleaved
(plain between every two SWS steps, the order rotating), so machine noise hits all alike; the
figures are medians after warm-up.

Memory: per kernel, for N weights and K components, a fresh subprocess allocates the weight tensor and its
gradient, records its resident set size, runs forward + backward of the complexity loss once and
reads the peak RSS (VmHWM, reset just before). (peak - baseline) / N is the prior's extra peak memory in
bytes per weight. tracemalloc cannot see torch's allocations, hence RSS.

    .venv/bin/python benchmarks/prior_speed.py --steps 200 --warmup 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from weightshare.methods.sws.prior import MixturePrior


def _local_model(name: str) -> nn.Module:
    if name == "lenet300":
        return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    # LeNet-5-Caffe: no ReLU after the convolutions (Caffe's prototxt).
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def build(name: str) -> nn.Module:
    """``weightshare.models.architectures.build_model`` when it exists, else the local definition."""
    try:
        from weightshare.models.architectures import build_model

        return build_model(name)
    except (ImportError, AttributeError, KeyError, ValueError):
        return _local_model(name)


@torch.no_grad()
def make_trained_like(model: nn.Module, prior: MixturePrior | None = None, nonzero: float = 0.05) -> None:
    """Put ``model`` (and ``prior``) in the state of a finished retraining, the one that costs most.

    Like runs/lenet300-sws at the end (benchmarks/RESULTS.md): 5 % of the weights spread over 16
    components in [-0.9, 0.9] with sigma 0.015, the rest on a zero spike with sigma 0.004. The grid
    kernel's cost grows with the span of the weights over the narrowest sigma, so this state, not
    the initial one (all sigma = 0.25), is where a step is slowest.
    """
    gen = torch.Generator().manual_seed(1)
    means = torch.linspace(-0.9, 0.9, 16)
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            comp = torch.randint(0, 16, p.shape, generator=gen)
            on = torch.rand(p.shape, generator=gen) < nonzero
            p.copy_(
                torch.where(
                    on,
                    means[comp] + 0.015 * torch.randn(p.shape, generator=gen),
                    0.004 * torch.randn(p.shape, generator=gen),
                )
            )
    if prior is not None:
        prior.means.copy_(means)
        prior.log_precisions.copy_(-2.0 * torch.log(torch.tensor([0.004] + [0.015] * 16)))


class Trainer:
    """One model + optimizer; ``step`` runs a full training step and returns its seconds."""

    def __init__(
        self, name: str, kernel: str | None, tau: float = 0.005, n_train: int = 60000, trained: bool = False
    ) -> None:
        torch.manual_seed(0)
        self.model = build(name)
        self.kernel, self.scale = kernel, tau / n_train
        groups: list[dict] = [{"params": list(self.model.parameters()), "lr": 5e-4}]
        if kernel is not None:
            self.prior = MixturePrior.from_model(self.model, kernel=kernel)
            self.weights = [p for n, p in self.model.named_parameters() if n in self.prior.names]
            groups += [
                {"params": [self.prior.means], "lr": 1e-4},
                {"params": [self.prior.log_precisions], "lr": 3e-3},
                {"params": [self.prior.mixing_logits], "lr": 3e-3},
            ]
        self.snapshot: list[tuple[torch.Tensor, torch.Tensor]] = []
        if trained:
            # Restored before every (timed) step: Adam on random batches would otherwise carry the
            # weights away from the components within a few hundred steps.
            make_trained_like(self.model, getattr(self, "prior", None))
            params = [p for g in groups for p in g["params"]]
            self.snapshot = [(p, p.detach().clone()) for p in params]
        self.opt = torch.optim.Adam(groups)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            for param, saved in self.snapshot:
                param.copy_(saved)
        start = time.perf_counter()
        loss = F.cross_entropy(self.model(x), y)
        if self.kernel is not None:
            loss = loss + self.scale * self.prior.complexity_loss(self.weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start


KERNELS = ("grid", "fast", "naive")


def speed(
    name: str, steps: int, warmup: int, kernels: tuple[str, ...] = KERNELS, trained: bool = False
) -> dict[str, float]:
    x = torch.rand(128, 784) if name == "lenet300" else torch.rand(128, 1, 28, 28)
    y = torch.randint(0, 10, (128,))
    runs = {"plain": Trainer(name, None, trained=trained)} | {k: Trainer(name, k, trained=trained) for k in kernels}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(warmup + steps):
        shift = i % len(kernels)
        for kernel in kernels[shift:] + kernels[:shift]:  # rotate the order: no kernel always runs first
            for key in (kernel, "plain"):
                t = runs[key].step(x, y)
                if i >= warmup:
                    times[key].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, float] = {
        "weights": sum(w.numel() for w in runs[kernels[0]].weights),
        "plain_ms": 1e3 * med["plain"],
    }
    for k in kernels:
        row[f"sws_{k}_ms"] = 1e3 * med[k]
        row[f"ratio_{k}"] = med[k] / med["plain"]
    return row


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak() -> None:
    # ru_maxrss is inherited from the parent across fork/exec, so reset the kernel's high-water
    # mark (VmHWM) instead (Linux >= 4.0: writing 5 to clear_refs).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_case(n: int, k: int, kernel: str) -> float:
    """Run in a fresh process: extra peak bytes per weight of one fwd+bwd of the complexity loss."""
    small = torch.randn(4096, requires_grad=True)  # warm-up: load kernels/libraries before the baseline
    MixturePrior.from_weights([small], num_components=k, kernel=kernel).complexity_loss([small]).backward()
    w = torch.randn(n) * 0.1
    w.requires_grad_(True)
    w.grad = torch.zeros_like(w)
    prior = MixturePrior.from_weights([w], num_components=k, kernel=kernel)
    base = _rss_bytes()
    _reset_peak()
    prior.complexity_loss([w]).backward()
    peak = _peak_rss_bytes()
    return max(peak - base, 0) / n


def memory(n: int, k: int, kernel: str = "grid") -> float:
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--memory-case", str(n), str(k), kernel]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/prior_speed.json"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 5_000_000, 25_000_000])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-case", nargs=3, metavar=("N", "K", "KERNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_case:
        n, k, kernel = args.memory_case
        print(memory_case(int(n), int(k), kernel))
        return
    result: dict[str, object] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    head = "".join(f"{k + ' ms':>10}" for k in KERNELS) + "".join(f"{k + ' x':>9}" for k in KERNELS)
    print(f"{'net':<10}{'weights':>9}{'plain ms':>10}{head}")
    for state in ("init", "trained"):
        print(f"-- state: {state} ({'initial mixture' if state == 'init' else 'end of retraining, make_trained_like'})")
        for name in ("lenet300", "lenet5"):
            row = speed(name, args.steps, args.warmup, trained=state == "trained")
            result[name if state == "init" else f"{name}_trained"] = row
            cells = "".join(f"{row[f'sws_{k}_ms']:>10.2f}" for k in KERNELS)
            cells += "".join(f"{row[f'ratio_{k}']:>9.2f}" for k in KERNELS)
            print(f"{name:<10}{row['weights']:>9}{row['plain_ms']:>10.2f}{cells}")
    mem = []
    # naive holds several N x K matrices: measured only where that fits comfortably.
    print(f"\n{'N':>11}{'K':>4}  " + "".join(f"{k:>8}" for k in KERNELS) + "   extra peak bytes/weight")
    for n in args.sizes:
        for k in (17, 64):
            entry: dict[str, float | int | None] = {"n": n, "k": k}
            for kernel in KERNELS:
                entry[kernel] = memory(n, k, kernel) if kernel != "naive" or n * k <= 64_000_000 else None
            mem.append(entry)
            cells = "".join(f"{'-':>8}" if entry[c] is None else f"{entry[c]:>8.1f}" for c in KERNELS)
            print(f"{n:>11}{k:>4}  {cells}")
    result["memory"] = mem
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
