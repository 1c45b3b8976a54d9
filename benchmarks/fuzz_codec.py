"""Fuzz the .wsz decoder: mutated and truncated files must raise FormatError or decode, nothing else.

    python benchmarks/fuzz_codec.py --iterations 100000 --out fuzz.json

Most mutations get a recomputed CRC so they reach the parser and the ANS decoder
rather than stopping at the checksum. Each case runs ``decode`` and ``inspect``;
the slowest case and the peak memory are recorded to catch hangs and blow-ups.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import time
import traceback
import zlib
from collections import Counter

import numpy as np
import torch

from weightshare.codec import decode, encode, inspect
from weightshare.codec.container import Header, QuantEntry, write_file
from weightshare.codec.layouts import candidates
from weightshare.core.errors import FormatError
from weightshare.core.quantized import QuantizedModel, QuantizedTensor


def seed_files() -> list[bytes]:
    """Small files covering every layout: dense, sparse with raw gap bits, structured, byte planes, float16,
    several codebooks."""
    g = torch.Generator().manual_seed(0)
    sparse = torch.zeros(40, 300, dtype=torch.int64)
    sparse[::3, ::37] = torch.randint(1, 9, (14, 9), generator=g)
    sparse[39, 299] = 3  # a long final gap: raw bits
    dense = torch.randint(0, 5, (16, 25), generator=g)
    cbs = [torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2]), torch.linspace(0, 1, 9)]
    q = QuantizedModel(cbs, {"fc1.weight": QuantizedTensor(sparse, 1), "fc2.weight": QuantizedTensor(dense, 0)},
                       {"fc1.bias": torch.randn(40, generator=g)}, {"method": "dc", "model": "toy"})  # fmt: skip
    single = QuantizedModel([torch.tensor([0.0, 1.0])], {"w": QuantizedTensor(torch.tensor([[0, 1], [1, 1]]))})
    zeros = QuantizedModel([torch.tensor([0.0])], {"z": QuantizedTensor(torch.zeros(1000, dtype=torch.int64))})
    # Format version 2: element types of every kind and a tensor stored once under two names.
    kinds = {"h": torch.randn(5, generator=g).half(), "b": torch.randn(3, generator=g).bfloat16(), "n": torch.tensor(7),
             "m": torch.tensor([True, False, True]), "u": torch.arange(4, dtype=torch.uint8)}  # fmt: skip
    typed = QuantizedModel(cbs, {"e.weight": QuantizedTensor(dense, 0, torch.bfloat16)}, kinds,
                           aliases={"head.weight": "e.weight", "k": "n"})  # fmt: skip
    # Format version 3: dense tensors as byte planes (float and int64).
    biases = {"s.bias": torch.linspace(-0.05, 0.05, 30), "steps": torch.arange(40) * 1000}
    planes = QuantizedModel(cbs, {"fc2.weight": QuantizedTensor(dense, 0)}, biases)
    return [
        *every_layout(g),
        encode(planes),
        encode(planes, float16=True),
        encode(q),
        encode(q, float16=True),
        encode(single),
        encode(zeros),
        encode(typed),
        encode(typed, float16=True),
    ]


def every_layout(g: torch.Generator) -> list[bytes]:
    """One file per layout the encoder can write (dense, sparse, structured in both orders) for tensors whose
    occupancy takes every coding (raw bits, bitmap, runs, all occupied), whichever the encoder would keep."""
    runs = torch.rand(30, 80, generator=g) < 0.3
    runs[:, :20], runs[:, 60:] = False, False  # a long run of live inputs between dead ones
    runs &= torch.rand(30, 1, generator=g) < 0.6  # dead output units at random
    bitmap = torch.zeros(40, 200, dtype=torch.bool)
    alive = torch.nonzero(torch.rand(200, generator=g) < 0.9).reshape(-1)
    bitmap[torch.randint(0, 40, (alive.numel(),), generator=g), alive] = True
    bitmap[torch.arange(40), alive[:40]] = True  # every row occupied
    conv = torch.rand(12, 6, 3, 3, generator=g) < 0.5
    conv[:, 2], conv[4] = False, False  # a dead input channel, a dead filter
    files = []
    for mask in (runs, bitmap, conv):
        idx = (torch.randint(1, 9, mask.shape, generator=g) * mask).reshape(-1).numpy()
        for entry, parts, _ in candidates(QuantEntry("w", tuple(mask.shape), 0, 0, [], 0), idx):
            files.append(write_file(Header(False, {}, [9], [entry], []), [np.ones(8, "<f4").tobytes(), *parts]))
    return files


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip bits, overwrite, truncate, insert, delete or duplicate a span; usually re-seal the CRC."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not b:
            break
        i, op = rng.randrange(len(b)), rng.randrange(6)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            del b[i:]
        elif op == 3:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
        elif op == 4:
            del b[i : i + rng.randrange(1, 5)]
        else:
            b[i:i] = b[i : i + rng.randrange(1, 9)]
    if rng.random() < 0.85 and len(b) >= 10:
        b[6:10] = struct.pack("<I", zlib.crc32(bytes(b[10:])))
    return bytes(b)


def fuzz(iterations: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    seeds = seed_files()
    counts: Counter[str] = Counter()
    others: list[str] = []
    slowest = 0.0
    start = time.perf_counter()
    for i in range(iterations):
        data = mutate(seeds[i % len(seeds)], rng)
        t0 = time.perf_counter()
        try:
            decode(data)
            inspect(data)
            counts["ok"] += 1
        except FormatError:
            counts["FormatError"] += 1
        except Exception:  # anything else is a bug: record it with the input that caused it
            counts["other"] += 1
            if len(others) < 20:
                others.append(f"{data.hex()}\n{traceback.format_exc()}")
        slowest = max(slowest, time.perf_counter() - t0)
    return {
        "iterations": iterations,
        "seed": seed,
        "counts": {k: counts[k] for k in ("ok", "FormatError", "other")},
        "seconds": time.perf_counter() - start,
        "slowest_case_s": slowest,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "others": others,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the counts as JSON here")
    args = ap.parse_args(argv)
    np.seterr(all="raise")  # a numpy warning on corrupt data should surface as an 'other', not pass silently
    result = fuzz(args.iterations, args.seed)
    c = result["counts"]
    print(f"{args.iterations} cases in {result['seconds']:.1f} s: ok {c['ok']}, FormatError {c['FormatError']}, "
          f"other {c['other']}; slowest case {1e3 * result['slowest_case_s']:.1f} ms, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB")  # fmt: skip
    for report in result["others"][:3]:
        print(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
