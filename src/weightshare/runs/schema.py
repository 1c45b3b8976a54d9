"""What a run directory holds, named once: every stage reads and writes through these names.

A run directory is everything a result depends on and everything it produced. Pretraining
writes the first group below, a compression run the first and the second; method records
are the files a method declares (:meth:`weightshare.methods.base.Method.records`, e.g. soft
weight-sharing's mixture at every epoch), written under the names it gives.

>>> COMPRESSED.path, REPORT.path
('model.wsz', 'report.json')
>>> [a.path for a in ARTIFACTS if a.stage == "pretrain"]
['model.safetensors', 'result.json']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARTIFACTS",
    "Artifact",
    "CHECKPOINTS",
    "COMPRESSED",
    "CONFIG",
    "ENV",
    "FIGURES",
    "FRAMES",
    "METRICS",
    "MODEL_FINAL",
    "MODEL_INIT",
    "PRETRAINED",
    "QUANTIZED",
    "REPORT",
    "RESULT",
    "SENSITIVITY_CSV",
    "SENSITIVITY_JSON",
    "SUMMARY",
]


@dataclass(frozen=True)
class Artifact:
    """One named file (or folder) of a run directory: where it lives, who writes it, what it holds."""

    path: str
    stage: str
    what: str


# every run
CONFIG = Artifact("config.json", "any", "every resolved setting: the command and its sections")
ENV = Artifact("env.json", "any", "versions, hardware and the git commit")
METRICS = Artifact("metrics.csv", "any", "one row per epoch: losses, errors, the method's own columns")
CHECKPOINTS = Artifact("checkpoints", "any", "the last finished epoch: weights, optimizer, method state, RNG")
# pretrain
PRETRAINED = Artifact("model.safetensors", "pretrain", "the final weights")
RESULT = Artifact("result.json", "pretrain", "the final validation and test error")
# compress
MODEL_INIT = Artifact("model_init.safetensors", "compress", "the pretrained weights the retraining started from")
MODEL_FINAL = Artifact("model_final.safetensors", "compress", "the retrained float weights, before finalize")
QUANTIZED = Artifact("quantized.safetensors", "compress", "the QuantizedModel after the finishing stages")
COMPRESSED = Artifact("model.wsz", "compress", "the compressed file every reported figure comes from")
REPORT = Artifact("report.json", "compress", "errors, file and paper-style rates, per-layer table")
SUMMARY = Artifact("summary.json", "compress", "the report's headline as one flat row (for tables, Pareto plots)")
FRAMES = Artifact("frames", "compress", "a sample of the covered weights per epoch (compress --make-gif)")
# later commands
FIGURES = Artifact("figures", "plot", "figures drawn from the run (weightshare plot)")
SENSITIVITY_CSV = Artifact("sensitivity.csv", "sensitivity", "validation error per layer and pruned fraction")
SENSITIVITY_JSON = Artifact("sensitivity.json", "sensitivity", "the same, with the suggested kept fractions")

ARTIFACTS: tuple[Artifact, ...] = (
    CONFIG,
    ENV,
    METRICS,
    CHECKPOINTS,
    PRETRAINED,
    RESULT,
    MODEL_INIT,
    MODEL_FINAL,
    QUANTIZED,
    COMPRESSED,
    REPORT,
    SUMMARY,
    FRAMES,
    FIGURES,
    SENSITIVITY_CSV,
    SENSITIVITY_JSON,
)
