"""Every method's ``digits`` preset from the two ways a user pretrains the digits MLP, over several seeds.

    python benchmarks/digits_starts.py --seeds 0 1 2 3 4 --root /tmp/digits-starts --out digits_starts.json

For each seed it pretrains twice, exactly as the command line does: ``default`` is
``weightshare pretrain --model mlp --dataset digits`` (20 epochs at Adam 1e-3, batch 128) and ``demo``
is ``weightshare pretrain --preset digits`` (what ``weightshare demo`` pretrains). From each it runs
``weightshare compress METHOD --preset digits`` for every method and prints the pretrained, retrained
and decoded test error, the decoded minus pretrained gap, the rate measured from ``model.wsz`` and the
non-zeros; then per method and start the median and the worst gap. Issue 20 asks for a gap of at most
2 points for every preset, and at most 1 point at >= 30x for the demo's soft weight-sharing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from pathlib import Path

from weightshare.cli import main as cli
from weightshare.core.io import write_json
from weightshare.methods import CONFIGS

STARTS = {"default": ["--model", "mlp", "--dataset", "digits"], "demo": ["--preset", "digits"]}


def quiet(argv: list[str]) -> None:
    """Run one ``weightshare`` command, its printing swallowed; a failure stops the benchmark."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli([*argv, "--quiet"])
    if code != 0:
        raise SystemExit(f"weightshare {' '.join(argv)} exited with {code}")


def run_one(root: Path, start: str, seed: int, method: str) -> dict:
    source = root / f"{start}-{seed}"
    if not (source / "model.safetensors").is_file():
        quiet(["pretrain", *STARTS[start], "--seed", str(seed), "--threads", "1", "--out", str(source)])
    out = root / f"{start}-{seed}-{method}"
    began = time.perf_counter()
    quiet(["compress", method, "--preset", "digits", "--threads", "1", "--from", str(source), "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    errors = {stage: report["errors"][stage]["test_error"] for stage in ("pretrained", "retrained", "decoded")}
    return {
        "start": start,
        "seed": seed,
        "method": method,
        **errors,
        "gap": errors["decoded"] - errors["pretrained"],
        "cr_file": report["file"]["cr_all"],
        "bytes": report["file"]["bytes"],
        "nonzero": report["totals"]["nonzero_fraction"],
        "seconds": time.perf_counter() - began,
    }


def summary(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["start"]), []).append(row)
    return [
        {
            "method": method,
            "start": start,
            "median_gap": statistics.median(r["gap"] for r in group),
            "worst_gap": max(r["gap"] for r in group),
            "median_cr_file": statistics.median(r["cr_file"] for r in group),
        }
        for (method, start), group in groups.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds")
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--root", required=True, help="directory for the run directories (reused if there)")
    parser.add_argument("--out", help="write every row and the summary as JSON here")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        for start in STARTS:
            for seed in args.seeds:
                r = run_one(Path(args.root), start, seed, method)
                rows.append(r)
                print(
                    f"{method:5s} {start:7s} seed {seed}: {r['pretrained']:5.2f}% -> {r['retrained']:5.2f}% -> "
                    f"{r['decoded']:5.2f}% (gap {r['gap']:+.2f}), {r['cr_file']:5.1f}x by the file, "
                    f"{r['nonzero']:.1%} non-zero, {r['seconds']:.0f} s",
                    flush=True,
                )
    for s in summary(rows):
        print(
            f"{s['method']:5s} {s['start']:7s}: median gap {s['median_gap']:+.2f}, worst {s['worst_gap']:+.2f}, "
            f"median {s['median_cr_file']:.1f}x"
        )
    if args.out:
        write_json(args.out, {"rows": rows, "summary": summary(rows)})


if __name__ == "__main__":
    main()
