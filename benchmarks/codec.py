"""How close the .wsz file gets to the entropy limit, how it compares with zstd / xz, and how fast it is.

    python benchmarks/codec.py --synthetic lenet5 --out codec_lenet5.json
    python benchmarks/codec.py --qmodel runs/x/quantized.safetensors

The synthetic models imitate soft weight-sharing results (17-entry global
codebook, whole input neurons pruned, ~5% / ~1% non-zero) for when no real run
exists yet. Generic baselines compress the same quantized model twice: as the
float32 state dict (safetensors bytes) and as uint8 index arrays + codebooks +
dense floats (the strongest generic form).
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import time
from collections.abc import Callable

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from weightshare.codec import decode, encode, file_rates, format_inspect, inspect
from weightshare.core.quantized import QuantizedModel, QuantizedTensor, load_quantized

SHAPES = {
    "lenet300": {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)},
    "lenet5": {"conv1": (20, 1, 5, 5), "conv2": (50, 20, 5, 5), "fc1": (500, 800), "fc2": (10, 500)},
}
# Per-layer non-zero fractions shaped like published SWS / DNS results: big fc layers are pruned hardest.
DENSITY = {
    "lenet300": {"fc1": 0.036, "fc2": 0.12, "fc3": 0.5},
    "lenet5": {"conv1": 0.45, "conv2": 0.06, "fc1": 0.0045, "fc2": 0.1},
}


def synthetic(name: str, seed: int = 0) -> QuantizedModel:
    """A realistic SWS-like quantized model: one 17-entry codebook, structured sparsity."""
    rng = np.random.default_rng(seed)
    means = np.sort(np.r_[-np.geomspace(0.02, 0.45, 8), np.geomspace(0.02, 0.45, 8)]).astype(np.float32)
    codebook = torch.from_numpy(np.r_[np.float32(0.0), means])
    usage = np.exp(-np.abs(means) / 0.12)  # components near zero take most of the surviving weights
    usage /= usage.sum()
    quantized, dense = {}, {}
    for layer, shape in SHAPES[name].items():
        fan_in = int(np.prod(shape[1:]))
        alive = rng.random(fan_in) < min(1.0, 3 * DENSITY[name][layer])  # pruned input neurons / channels
        p = DENSITY[name][layer] / max(alive.mean(), 1e-9)
        mask = (rng.random((shape[0], fan_in)) < min(p, 1.0)) & alive
        idx = np.where(mask, rng.choice(16, size=mask.shape, p=usage) + 1, 0)
        quantized[f"{layer}.weight"] = QuantizedTensor(torch.from_numpy(idx.reshape(shape)))
        dense[f"{layer}.bias"] = torch.from_numpy(rng.normal(0, 0.05, shape[0]).astype(np.float32))
    return QuantizedModel([codebook], quantized, dense, {"method": "sws", "model": name})


# --- generic baselines ----------------------------------------------------
def _zstd(data: bytes) -> int | None:
    try:
        import zstandard  # type: ignore[import-not-found]

        return len(zstandard.ZstdCompressor(level=19).compress(data))
    except ImportError:
        pass
    if shutil.which("zstd") is None:
        return None
    out = subprocess.run(["zstd", "-19", "-q", "-c"], input=data, capture_output=True, check=True)
    return len(out.stdout)


def _xz(data: bytes) -> int:
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def index_arrays(q: QuantizedModel) -> bytes:
    """uint8 (or int16) index arrays + float32 codebooks + dense floats, concatenated."""
    parts = [cb.numpy().astype("<f4").tobytes() for cb in q.codebooks]
    for qt in q.quantized.values():
        dtype = "u1" if q.codebooks[qt.codebook].numel() <= 256 else "<u2"
        parts.append(qt.indices.numpy().astype(dtype).tobytes())
    parts += [t.numpy().astype("<f4").tobytes() for t in q.dense.values()]
    return b"".join(parts)


def baselines(q: QuantizedModel) -> dict[str, int | None]:
    state = safetensors_bytes({k: v.contiguous() for k, v in q.to_state_dict().items()})
    arrays = index_arrays(q)
    return {
        "zstd-19 float32 state dict": _zstd(state),
        "xz -9e float32 state dict": _xz(state),
        "zstd-19 uint8 indices + codebooks": _zstd(arrays),
        "xz -9e uint8 indices + codebooks": _xz(arrays),
    }


# --- timing -----------------------------------------------------------------
def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(q: QuantizedModel, repeats: int) -> dict[str, object]:
    data = encode(q)
    back = decode(data)
    exact = all(torch.equal(back.quantized[n].indices, qt.indices) for n, qt in q.quantized.items())
    report = inspect(data)
    enc, dec = best_time(lambda: encode(q), repeats), best_time(lambda: decode(data), repeats)
    n = q.num_quantized
    return {
        "file_bytes": len(data),
        "bit_exact": exact,
        "entropy_bound_bytes": report.entropy_bound_bytes,
        "file_over_bound": len(data) / report.entropy_bound_bytes,
        "header_share": report.header_bytes / len(data),
        "encode_weights_per_s": n / enc,
        "decode_weights_per_s": n / dec,
        "baselines": baselines(q),
        "report": report.to_dict(),
        "rates": file_rates(report),
        "table": format_inspect(report),
    }


def print_summary(name: str, res: dict) -> None:
    print(f"== {name}")
    print(res["table"])
    file_bytes = res["file_bytes"]
    print(f"\n{'encoding':40s} {'bytes':>9s} {'vs .wsz':>8s}")
    print(f"{'.wsz (this codec)':40s} {file_bytes:9d} {1.0:8.2f}")
    print(f"{'entropy bound (streams+cb+header+dense)':40s} {res['entropy_bound_bytes']:9.1f} "
          f"{res['entropy_bound_bytes'] / file_bytes:8.3f}")  # fmt: skip
    for label, size in res["baselines"].items():
        text = f"{size:9d} {size / file_bytes:8.2f}" if size is not None else "  missing"
        print(f"{label:40s} {text}")
    print(f"\nfile / bound = {res['file_over_bound']:.4f}   header share = {100 * res['header_share']:.2f}%   "
          f"encode {res['encode_weights_per_s'] / 1e6:.1f} M weights/s   "
          f"decode {res['decode_weights_per_s'] / 1e6:.1f} M weights/s   bit-exact {res['bit_exact']}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--qmodel", help="a quantized checkpoint written by weightshare.core.quantized.save_quantized")
    src.add_argument("--synthetic", choices=sorted(SHAPES), nargs="+", help="synthetic SWS-like model(s)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    models = {args.qmodel: load_quantized(args.qmodel)} if args.qmodel else {}
    models |= {name: synthetic(name, args.seed) for name in args.synthetic or []}
    results = {}
    for name, q in models.items():
        results[name] = run(q, args.repeats)
        print_summary(name, results[name])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return results


if __name__ == "__main__":
    main()
