"""The ``[finish]`` settings: the stages that run after any method's ``finalize``."""

from __future__ import annotations

import dataclasses

from weightshare.core.settings import setting

__all__ = ["FinishConfig"]


@dataclasses.dataclass
class FinishConfig:
    """QuantizedModel -> QuantizedModel stages, in this order: dead-weight removal, quantization of the float
    parameters left dense, codebook fine-tuning, float16 storage.

    >>> FinishConfig().codebook_epochs
    0
    """

    remove_dead: bool = setting(
        False, "remove weights that provably never change the output (lossless; finish/deadweights.py)"
    )
    dense_param_bits: int = setting(
        0,
        "bits per value of the float parameters left dense (biases, norms), quantized per tensor by k-means; "
        "0 = keep them float (finish/densequant.py)",
        ge=0,
        le=16,
    )
    codebook_epochs: int = setting(
        0, "epochs that train the shared values and the dense tensors with every index fixed (0 = off)", ge=0
    )
    codebook_lr: float = setting(1e-4, "Adam learning rate of that fine-tuning (constant)", gt=0)
    float16: bool = setting(
        False,
        "store the codebook values and the float32 dense tensors as float16 in the file (lossy, after every "
        "other stage; the model decoded from the file is the one evaluated)",
    )
